//! Tokenizers, all Hugging Face `tokenizers` models saved as `tokenizer.json`:
//! - byte-level BPE (the GPT-2 scheme): any text round-trips, no unknown tokens;
//! - character level (a BPE with no merges over the corpus's characters), for small corpora
//!   and the Shakespeare baseline.

use crate::MlError;
use std::path::Path;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// Marks the end of a document; also what generation stops at.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// Chat roles for the chat template.
pub const SYSTEM: &str = "<|system|>";
pub const USER: &str = "<|user|>";
pub const ASSISTANT: &str = "<|assistant|>";
/// What a character-level tokenizer maps characters it never saw to.
pub const UNKNOWN: &str = "<|unk|>";

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub vocab_size: usize,
    pub min_frequency: u64,
    /// Special tokens, given the first ids in this order.
    pub special_tokens: Vec<String>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            vocab_size: 8192,
            min_frequency: 2,
            special_tokens: [END_OF_TEXT, SYSTEM, USER, ASSISTANT]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The end-of-text id, which also pads batches; 0 for a tokenizer without one.
pub fn end_of_text(tokenizer: &Tokenizer) -> u32 {
    tokenizer.token_to_id(END_OF_TEXT).unwrap_or(0)
}

fn err(e: impl std::fmt::Display) -> MlError {
    MlError::Tokenizer(e.to_string())
}

/// Trains a byte-level BPE tokenizer on text files.
pub fn train(files: &[&Path], options: &TrainOptions) -> Result<Tokenizer, MlError> {
    if files.is_empty() {
        return Err(MlError::Empty(
            "no text files to train a tokenizer on".into(),
        ));
    }
    for file in files {
        std::fs::metadata(file).map_err(MlError::io(file))?;
    }
    let special: Vec<AddedToken> = options
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(options.vocab_size)
        .min_frequency(options.min_frequency)
        .special_tokens(special)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        tokenizers::NormalizerWrapper,
        ByteLevel,
        ByteLevel,
        ByteLevel,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
    .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
    .with_decoder(Some(ByteLevel::default()))
    .build()
    .map_err(err)?;
    let paths: Vec<String> = files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    tokenizer
        .train_from_files(&mut trainer, paths)
        .map_err(err)?;
    Ok(Tokenizer::from(tokenizer))
}

/// A character-level tokenizer over every character of `text`: the special tokens first
/// (ids 0–3), then [`UNKNOWN`], then the characters in code-point order.
pub fn train_chars(text: &str) -> Result<Tokenizer, MlError> {
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    if chars.is_empty() {
        return Err(MlError::Empty(
            "no text to build a character vocabulary from".into(),
        ));
    }
    let specials = [END_OF_TEXT, SYSTEM, USER, ASSISTANT, UNKNOWN];
    let vocab: tokenizers::models::bpe::Vocab = specials
        .iter()
        .map(|s| s.to_string())
        .chain(chars.iter().map(char::to_string))
        .enumerate()
        .map(|(id, token)| (token, id as u32))
        .collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .unk_token(UNKNOWN.into())
        .build()
        .map_err(err)?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_decoder(Some(tokenizers::decoders::fuse::Fuse::new()));
    tokenizer.add_special_tokens(&specials.map(|s| AddedToken::from(s, true)));
    Ok(tokenizer)
}

pub fn save(tokenizer: &Tokenizer, path: &Path) -> Result<(), MlError> {
    tokenizer.save(path, false).map_err(err)
}

pub fn load(path: &Path) -> Result<Tokenizer, MlError> {
    std::fs::metadata(path).map_err(MlError::io(path))?;
    Tokenizer::from_file(path).map_err(|e| MlError::Tokenizer(format!("{}: {e}", path.display())))
}

/// A small tokenizer trained on `text` repeated, in `dir`: for tests across the crate.
#[cfg(test)]
pub(crate) fn train_on(dir: &Path, text: &str, vocab_size: usize) -> Tokenizer {
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    train(
        &[&path],
        &TrainOptions {
            vocab_size,
            ..Default::default()
        },
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_saves_loads_and_round_trips_any_text() {
        let dir = tempfile::tempdir().unwrap();
        let text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n";
        let tokenizer = train_on(dir.path(), &text.repeat(200), 400);
        // Special tokens come first, in order.
        assert_eq!(tokenizer.token_to_id(END_OF_TEXT), Some(0));
        assert_eq!(tokenizer.token_to_id(ASSISTANT), Some(3));
        assert!(tokenizer.get_vocab_size(true) <= 400 && tokenizer.get_vocab_size(true) > 256 + 4);

        let path = dir.path().join("tokenizer.json");
        save(&tokenizer, &path).unwrap();
        let loaded = load(&path).unwrap();
        // Merges learned from the corpus compress it; text it never saw (accents, emoji) still round-trips.
        for text in [
            "to be, or not to be",
            "Ünïcödé ✓ 🦀 — naïve café",
            "<|user|>hi<|endoftext|>",
        ] {
            let ids = loaded.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(ids, tokenizer.encode(text, false).unwrap().get_ids());
            assert_eq!(loaded.decode(&ids, false).unwrap(), text);
        }
        let common = loaded.encode("that is the question", false).unwrap();
        assert!(
            common.len() < "that is the question".len() / 2,
            "{:?}",
            common.get_tokens()
        );
        assert_eq!(
            loaded
                .encode("<|user|>hi<|endoftext|>", false)
                .unwrap()
                .get_ids()[0],
            2
        );
    }

    #[test]
    fn character_tokenizer_maps_each_character_to_one_id() {
        let tokenizer = train_chars("First Citizen:\nBefore we proceed").unwrap();
        let text = "Before Citizen";
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        // 5 specials + 19 distinct characters; code-point order puts '\n' first.
        assert_eq!(tokenizer.get_vocab_size(true), 5 + 19);
        assert_eq!(tokenizer.token_to_id("\n"), Some(5));
        let unknown = tokenizer.encode("Bx", false).unwrap();
        assert_eq!(
            unknown.get_ids()[1],
            tokenizer.token_to_id(UNKNOWN).unwrap()
        );
        let chat = tokenizer.encode("<|user|>Be<|endoftext|>", false).unwrap();
        assert_eq!(chat.get_ids().len(), 4);
        assert_eq!(chat.get_ids()[0], 2);
        assert!(matches!(train_chars(""), Err(MlError::Empty(_))));
    }

    #[test]
    fn missing_inputs_are_clear_errors() {
        assert!(matches!(
            train(&[], &TrainOptions::default()),
            Err(MlError::Empty(_))
        ));
        let missing = Path::new("/nonexistent/corpus.txt");
        assert!(matches!(
            train(&[missing], &TrainOptions::default()),
            Err(MlError::Io { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let corrupt = dir.path().join("tokenizer.json");
        std::fs::write(&corrupt, "{not json").unwrap();
        assert!(matches!(load(&corrupt), Err(MlError::Tokenizer(_))));
    }
}
