//! Quark's data curation, a plain library: no Kafka, no database.
//!
//! - [`normalize`]: Unicode NFKC and the exact-duplicate key.
//! - [`minhash`]: MinHash signatures over word shingles and banded LSH.
//! - [`dedup`]: the persistent, incremental deduplication index.
//! - [`pii`]: PII and secrets to typed placeholders.
//! - [`filters`]: quality heuristics, toxicity (a trait; a lexicon by default), language.
//! - [`pipeline`]: all of it over batches of documents, with stats and reasons for rejects.
//! - [`store`]: curated datasets on disk (JSON lines: train, validation, rejects, stats).

pub mod dedup;
pub mod filters;
pub mod minhash;
pub mod normalize;
pub mod pii;
pub mod pipeline;
pub mod store;

#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("deduplication index: {0}")]
    Index(String),
    #[error("{0}")]
    Data(String),
}
