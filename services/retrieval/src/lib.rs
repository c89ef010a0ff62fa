//! Retrieval, a plain library (no Kafka, no database): documents cut into passages.
//!
//! - [`chunk`]: passages of a bounded size at sentence and code-block boundaries, overlapping
//!   by a bounded amount, each with its byte range in the document (for citations).
//! - [`fusion`]: reciprocal rank fusion of the rankings of several searches.

pub mod chunk;
pub mod fusion;
pub mod retriever;
pub mod store;
