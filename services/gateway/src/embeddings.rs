//! `POST /v1/embeddings` in OpenAI's shape, from the sentence encoder the knowledge index
//! uses. `encoding_format` is `float` or `base64` (little-endian f32, what the official
//! client asks for by default).

use crate::Gateway;
use crate::api::{ApiError, Refusals, TextInput, text_input};
use crate::routes::body;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// Inputs one request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    model: String,
    #[schema(schema_with = text_input)]
    input: TextInput,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingRequest, responses(
        (status = 200, description = "one embedding per input", body = serde_json::Value),
        Refusals,
))]
pub async fn embeddings(
    State(gateway): State<Arc<Gateway>>,
    parsed: Result<Json<EmbeddingRequest>, JsonRejection>,
) -> Response {
    match embed(&gateway, parsed).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn embed(
    gateway: &Gateway,
    parsed: Result<Json<EmbeddingRequest>, JsonRejection>,
) -> Result<serde_json::Value, ApiError> {
    let request = body(parsed)?;
    let knowledge = gateway
        .knowledge()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no embedding model is configured"))?;
    if request.model != knowledge.model {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no embedding model {:?}; this gateway has {:?}",
                request.model, knowledge.model
            ),
        ));
    }
    let texts = request
        .input
        .texts(MAX_INPUTS, "token arrays are not accepted: send text")?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format {other:?}: float or base64"),
            ));
        }
    };
    let retriever = &knowledge.retriever;
    // Embedding first loads the encoder off the async workers; the rest then reads it.
    let vectors = retriever.embed(texts.clone()).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the embedding model cannot answer: {e}"),
        )
    })?;
    let width = vectors.first().map_or(0, Vec::len);
    if let Some(d) = request.dimensions.filter(|&d| d != width) {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "{} gives {width}-dimensional embeddings, not {d}",
                knowledge.model
            ),
        ));
    }
    let mut tokens = 0;
    for text in &texts {
        tokens += retriever
            .token_count(text)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    }
    let data: Vec<serde_json::Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                serde_json::json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                serde_json::json!(vector)
            };
            serde_json::json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(serde_json::json!({
        "object": "list",
        "data": data,
        "model": knowledge.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}
