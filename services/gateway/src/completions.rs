//! `POST /v1/completions`: a prompt, or up to 64 (strings or token ids), each answered in
//! turn as its own response.served; with `echo` and `logprobs`, the prompt's tokens'
//! log-probabilities (a log-likelihood, as lm-evaluation-harness asks for one).

use crate::api::{ApiError, CompletionRequest, Prompt, Refusals, StreamEvent};
use crate::reply::Shape;
use crate::routes::{Prepared, Scoring, answer, body};
use crate::{Gateway, Served};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::Response;
use quark_ml::tokenizer::END_OF_TEXT;
use std::sync::Arc;

/// Prompts one completions request may hold.
const MAX_PROMPTS: usize = 64;

/// A completions prompt's text and ids (ids are checked against the vocabulary).
fn prompt_of(served: &Served, prompt: Prompt) -> Result<(String, Vec<u32>), ApiError> {
    let tokenizer = &served.tokenizer;
    let (text, ids) = match prompt {
        Prompt::Text(text) => {
            let ids = tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| ApiError::invalid("prompt", e.to_string()))?
                .get_ids()
                .to_vec();
            (text, ids)
        }
        Prompt::Ids(ids) => {
            let vocab = tokenizer.get_vocab_size(true) as u32;
            if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token {bad} is outside the vocabulary of {vocab}"),
                ));
            }
            let text = tokenizer
                .decode(&ids, false)
                .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
            (text, ids)
        }
    };
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    Ok((text, ids))
}

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest, responses(
        (status = 200, description = "the completions; server-sent chunks with stream", content(
            (serde_json::Value = "application/json"),
            (StreamEvent = "text/event-stream")
        )),
        Refusals,
))]
pub(crate) async fn completions(
    State(gateway): State<Arc<Gateway>>,
    parsed: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let prepared = async {
        let request = body(parsed)?;
        let prompts = request.prompt.prompts();
        // A request is routed once, by its first prompt.
        let first = match prompts.first() {
            Some(Prompt::Text(text)) => text.as_str(),
            _ => "",
        };
        let (served, routed) = gateway.choose(&request.model, first).await?;
        if request.logprobs.is_some_and(|k| k > 5) {
            return Err(ApiError::invalid(
                "logprobs",
                "logprobs must be between 0 and 5",
            ));
        }
        let scoring = Scoring {
            echo: request.echo,
            logprobs: request.logprobs,
        };
        if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
            return Err(ApiError::invalid(
                "prompt",
                format!("1 to {MAX_PROMPTS} prompts"),
            ));
        }
        let stop_tokens: Vec<u32> = served
            .tokenizer
            .token_to_id(END_OF_TEXT)
            .into_iter()
            .collect();
        prompts
            .into_iter()
            .map(|prompt| {
                let (prompt, ids) = prompt_of(&served, prompt)?;
                Ok(Prepared {
                    served: served.clone(),
                    ids,
                    route: request.model.clone(),
                    prompt,
                    messages: vec![],
                    stop_tokens: stop_tokens.clone(),
                    sampling: request.sampling.clone(),
                    scoring,
                    sources: None,
                    routed: routed.clone(),
                })
            })
            .collect()
    }
    .await;
    answer(gateway, Shape::Text, prepared).await
}
