//! The OpenAI wire format: requests, responses, stream chunks and errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
        }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": null,
            }
        });
        (self.status, Json(body)).into_response()
    }
}

/// `stop`: one string or a list.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::None => vec![],
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`: `include_usage` adds a last chunk with the usage and no choices.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling parameters common to both endpoints.
#[derive(Clone, Debug, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Stop,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<usize>,
}

/// The completions endpoint's `prompt`: a string, strings, token ids, or lists of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    One(String),
    Many(Vec<String>),
    Ids(Vec<u32>),
    ManyIds(Vec<Vec<u32>>),
}

/// One prompt of a completions request.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

impl PromptInput {
    pub fn prompts(self) -> Vec<Prompt> {
        match self {
            PromptInput::One(text) => vec![Prompt::Text(text)],
            PromptInput::Many(texts) => texts.into_iter().map(Prompt::Text).collect(),
            PromptInput::Ids(ids) => vec![Prompt::Ids(ids)],
            PromptInput::ManyIds(lists) => lists.into_iter().map(Prompt::Ids).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptInput,
    /// The prompt's text (and with `logprobs`, its tokens' log-probabilities) before the answer.
    #[serde(default)]
    pub echo: bool,
    /// Log-probabilities of each token, with this many (0 to 5) most likely alternatives.
    pub logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<crate::chat_input::ChatMessage>,
    /// Log-probabilities of the answer's tokens, with `top_logprobs` (0 to 20) alternatives.
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub tools: crate::chat_input::Tools,
    #[serde(default)]
    pub quark: crate::knowledge::QuarkOptions,
}

#[derive(Debug, Deserialize)]
pub struct FeedbackRequest {
    pub request_id: String,
    /// 1 (bad) to 5 (good).
    pub rating: i32,
    pub correction: Option<String>,
    pub preferred_response: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

pub fn finish_reason(finish: quark_ml::generate::FinishReason) -> &'static str {
    match finish {
        quark_ml::generate::FinishReason::Stop | quark_ml::generate::FinishReason::Cancelled => {
            "stop"
        }
        quark_ml::generate::FinishReason::Length => "length",
    }
}

/// `input` as OpenAI's embeddings and moderations take it: a string or an array of strings.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum TextInput {
    One(String),
    Many(Vec<String>),
    // Token arrays, image parts: anything that is not text.
    Other(serde::de::IgnoredAny),
}

impl TextInput {
    /// The texts, 1 to `max` of them, none empty; `not_text` says why anything else is
    /// refused.
    pub(crate) fn texts(self, max: usize, not_text: &str) -> Result<Vec<String>, ApiError> {
        let texts = match self {
            TextInput::One(text) => vec![text],
            TextInput::Many(texts) => texts,
            TextInput::Other(_) => return Err(ApiError::invalid("input", not_text)),
        };
        if texts.is_empty() || texts.len() > max || texts.iter().any(|t| t.is_empty()) {
            return Err(ApiError::invalid(
                "input",
                format!("input must be 1 to {max} non-empty strings"),
            ));
        }
        Ok(texts)
    }
}
