//! Retrieval-augmented chat and embeddings. For a chat request the passages of the knowledge
//! index that best answer the last user message go before the conversation as a system
//! message, as many as fit the model's context with room left for the answer, and the
//! sources used come back beside the answer. On by default once the index exists; a request
//! turns it off with `"quark": {"retrieval": false}` or the header `x-quark-retrieval: off`.

use crate::api::ApiError;
use axum::http::{HeaderMap, StatusCode};
use quark_ml::chat::{Message, Role};
use quark_retrieval::retriever::{RetrieveError, Retriever};
use quark_retrieval::store::{Hit, SearchMode, StoreError};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// The index the gateway answers from and how it searches it.
pub struct Knowledge {
    pub retriever: Arc<Retriever>,
    /// The encoder's name, as `/v1/embeddings` requests name it.
    pub model: String,
    pub index: String,
    pub k: usize,
    pub mode: SearchMode,
}

/// Quark's own request options, under `"quark"` in a chat request's body.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarkOptions {
    pub retrieval: Option<bool>,
    /// Passages to retrieve (default: the gateway's `k`).
    pub k: Option<usize>,
    /// `vector`, `full_text` or `hybrid`.
    #[schema(value_type = Option<String>)]
    pub mode: Option<SearchMode>,
}

/// Whether a request wants retrieval: yes unless its body or header says otherwise.
pub fn wanted(options: &QuarkOptions, headers: &HeaderMap) -> bool {
    let header_off = headers
        .get("x-quark-retrieval")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "off" | "false" | "0"
            )
        });
    options.retrieval.unwrap_or(true) && !header_off
}

/// The passages for `query`, best first; none while the index does not exist yet.
pub async fn retrieve(
    knowledge: &Knowledge,
    query: &str,
    options: &QuarkOptions,
) -> Result<Vec<Hit>, ApiError> {
    let k = options.k.unwrap_or(knowledge.k);
    let mode = options.mode.unwrap_or(knowledge.mode);
    match knowledge
        .retriever
        .search(&knowledge.index, query, k, mode)
        .await
    {
        Ok(hits) => Ok(hits),
        Err(RetrieveError::Store(StoreError::UnknownIndex(_))) => Ok(vec![]),
        Err(RetrieveError::Store(e @ StoreError::QueryTooLong { .. })) => {
            Err(ApiError::invalid("messages", e.to_string()))
        }
        Err(RetrieveError::Store(e @ StoreError::BadK { .. })) => {
            Err(ApiError::invalid("quark.k", e.to_string()))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the knowledge index cannot answer: {e}"),
        )),
    }
}

/// The conversation with the passages first, dropping the weakest passage until `fits` says
/// the result fits; returns it and the passages kept.
pub fn with_passages(
    messages: &[Message],
    mut hits: Vec<Hit>,
    fits: impl Fn(&[Message]) -> bool,
) -> (Vec<Message>, Vec<Hit>) {
    while !hits.is_empty() {
        let context: String = hits
            .iter()
            .enumerate()
            .map(|(i, hit)| format!("[{}] {}\n", i + 1, hit.passage.text))
            .collect();
        let mut augmented = vec![Message {
            role: Role::System,
            content: format!("Answer from these passages.\n{context}"),
        }];
        augmented.extend_from_slice(messages);
        if fits(&augmented) {
            return (augmented, hits);
        }
        hits.pop();
    }
    (messages.to_vec(), hits)
}

/// The sources of an answer, as the response shows them.
pub fn sources(hits: &[Hit]) -> serde_json::Value {
    serde_json::json!({ "sources": hits })
}
