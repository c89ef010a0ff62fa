//! Plain text to training data: concatenate files, split the first part for training and
//! the rest for validation, build or load a tokenizer, and encode both splits into shards.

use crate::MlError;
use crate::shards;
use crate::tokenizer::{self, TrainOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Which tokenizer to encode with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerSpec {
    /// One token per character of the training split.
    Characters,
    /// Byte-level BPE trained on the training split.
    ByteLevelBpe { vocab_size: usize },
    /// An existing `tokenizer.json`.
    File(PathBuf),
}

/// Encoded splits in a directory: `train.tok`, `val.tok`, `tokenizer.json`.
pub struct Prepared {
    pub tokenizer: Tokenizer,
    pub train: PathBuf,
    pub val: PathBuf,
    pub train_tokens: usize,
    pub val_tokens: usize,
}

/// Reads `files` in order, splits the concatenation at `1 - val_fraction` of its characters,
/// and writes the encoded splits and tokenizer to `dir`.
pub fn prepare(
    files: &[PathBuf],
    spec: &TokenizerSpec,
    val_fraction: f64,
    dir: &Path,
) -> Result<Prepared, MlError> {
    if !(0.0..1.0).contains(&val_fraction) || val_fraction == 0.0 {
        return Err(MlError::Config(format!(
            "validation fraction {val_fraction} is outside (0, 1)"
        )));
    }
    if files.is_empty() {
        return Err(MlError::Empty("no text files given".into()));
    }
    let mut text = String::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(MlError::io(file))?;
        let content = String::from_utf8(bytes)
            .map_err(|e| MlError::Data(format!("{}: not UTF-8 ({e})", file.display())))?;
        text.push_str(&content);
    }
    let chars = text.chars().count();
    if chars < 2 {
        return Err(MlError::Empty(format!(
            "{} file(s) hold {chars} character(s)",
            files.len()
        )));
    }
    let split = ((chars as f64) * (1.0 - val_fraction)) as usize;
    let at = text
        .char_indices()
        .nth(split)
        .map_or(text.len(), |(i, _)| i);
    let (train_text, val_text) = text.split_at(at);
    std::fs::create_dir_all(dir).map_err(MlError::io(dir))?;
    let tokenizer = match spec {
        TokenizerSpec::Characters => tokenizer::train_chars(train_text)?,
        TokenizerSpec::ByteLevelBpe { vocab_size } => {
            let path = dir.join("train.txt");
            std::fs::write(&path, train_text).map_err(MlError::io(&path))?;
            let trained = tokenizer::train(
                &[&path],
                &TrainOptions {
                    vocab_size: *vocab_size,
                    ..Default::default()
                },
            );
            std::fs::remove_file(&path).map_err(MlError::io(&path))?;
            trained?
        }
        TokenizerSpec::File(path) => tokenizer::load(path)?,
    };
    tokenizer::save(&tokenizer, &dir.join("tokenizer.json"))?;
    let (train, val) = (dir.join("train.tok"), dir.join("val.tok"));
    let train_tokens = shards::write(&tokenizer, &[train_text.to_string()], &train)?;
    let val_tokens = shards::write(&tokenizer, &[val_text.to_string()], &val)?;
    Ok(Prepared {
        tokenizer,
        train,
        val,
        train_tokens,
        val_tokens,
    })
}

/// Share of the text [`hold_out`] holds out (the trainer and the evaluator agree on it).
pub const HELD_OUT: f64 = 0.1;

/// Training and held-out documents. When a dataset has no held-out documents (a few long
/// ones all fell on the training side), the last `fraction` of the training text is held out,
/// cut at a whitespace, so that training and evaluation always have a split to use.
pub fn hold_out(
    mut train: Vec<String>,
    validation: Vec<String>,
    fraction: f64,
) -> (Vec<String>, Vec<String>) {
    if !validation.is_empty() || train.is_empty() {
        return (train, validation);
    }
    let total: usize = train.iter().map(String::len).sum();
    let mut need = ((total as f64) * fraction).ceil() as usize;
    let mut held = Vec::new();
    while need > 0 {
        let Some(mut last) = train.pop() else { break };
        if last.len() <= need && !train.is_empty() {
            need -= last.len();
            held.push(last);
            continue;
        }
        // Cut this one: its tail is held out, from a whitespace near the cut.
        let mut cut = last.len().saturating_sub(need).max(last.len() / 2);
        while !last.is_char_boundary(cut) {
            cut += 1;
        }
        let cut = last[cut..]
            .find(char::is_whitespace)
            .map_or(cut, |i| cut + i);
        held.push(last.split_off(cut));
        train.push(last);
        break;
    }
    held.reverse();
    held.retain(|d| !d.trim().is_empty());
    (train, held)
}

#[cfg(test)]
mod hold_out_tests {
    use super::hold_out;

    #[test]
    fn a_split_without_validation_holds_out_the_end_of_the_text() {
        let play = "word ".repeat(1000);
        let (train, held) = hold_out(vec![play.clone()], vec![], 0.1);
        assert_eq!(train.len(), 1);
        assert_eq!(held.len(), 1);
        assert_eq!(
            format!("{}{}", train[0], held[0]),
            play,
            "nothing lost or repeated"
        );
        let share = held[0].len() as f64 / play.len() as f64;
        assert!((0.09..=0.11).contains(&share), "{share}");

        let (train, held) = hold_out(vec!["a b".into(), "c d".into()], vec!["v".into()], 0.1);
        assert_eq!(
            (train.len(), held),
            (2, vec!["v".to_string()]),
            "an existing split is kept"
        );
    }
}
