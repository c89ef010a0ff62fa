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
