//! Quark's ML core, a plain library: no Kafka, no database.
//!
//! - [`tokenizer`]: byte-level BPE trained with Hugging Face `tokenizers`, saved as `tokenizer.json`.
//! - [`shards`]: datasets encoded into flat files of token ids, read back memory-mapped.

pub mod shards;
pub mod tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a token shard: {1}")]
    BadShard(std::path::PathBuf, String),
    #[error("empty dataset: {0}")]
    Empty(String),
}

impl MlError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MlError + '_ {
        move |source| MlError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
