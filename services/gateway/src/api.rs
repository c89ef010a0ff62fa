//! The OpenAI wire format: requests, responses, stream chunks and errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

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
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

/// The body of every refusal, in OpenAI's shape.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `request_too_large`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, where one is.
    pub param: Option<&'static str>,
    /// Always null (OpenAI's machine-readable code).
    pub code: Option<String>,
}

/// The refusals of the routes that take a body, for the OpenAPI document (each an
/// [`ErrorBody`]).
#[derive(IntoResponses)]
pub enum Refusals {
    /// A body that is not JSON or not the request's shape, or a value out of range.
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// No such model (or request id), or the route is off on this gateway.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// A body larger than `gateway.max_body_bytes`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The gateway is answering `gateway.max_in_flight` generations already: retry after the
    /// seconds in `Retry-After`.
    #[response(status = 429, headers(("Retry-After" = u32, description = "seconds to wait")))]
    Busy(ErrorBody),
    /// No model is loaded yet, or the bus did not take the event.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = ErrorDetail {
            kind: self.kind(),
            message: self.message,
            param: self.param,
            code: None,
        };
        let mut response = (self.status, Json(ErrorBody { error })).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // A generation of the default length takes about a second on a CPU.
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, 1.into());
        }
        response
    }
}

/// One server-sent event of a streamed answer, as the OpenAPI document describes it: `data` is
/// a chunk in JSON, and `[DONE]` last.
#[derive(ToSchema)]
pub struct StreamEvent {
    pub data: String,
}

/// `stop`: one string or a list.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
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
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling parameters common to both endpoints.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct Sampling {
    /// At least 1 (0 with `echo`), at most the gateway's `max_tokens`.
    pub max_tokens: Option<usize>,
    /// The chat endpoint's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Stop,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Choices per prompt (a stream takes one).
    #[schema(minimum = 1, maximum = 8)]
    pub n: Option<usize>,
}

/// The completions endpoint's `prompt`: a string, strings, token ids, or lists of them.
#[derive(Debug, Deserialize, ToSchema)]
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

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"model": "champion", "prompt": "To be, or not", "max_tokens": 4}))]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptInput,
    /// The prompt's text (and with `logprobs`, its tokens' log-probabilities) before the answer.
    #[serde(default)]
    pub echo: bool,
    /// Log-probabilities of each token, with this many (0 to 5) most likely alternatives.
    #[schema(maximum = 5)]
    pub logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "model": "champion",
    "messages": [{"role": "user", "content": "Who is Hamlet?"}],
    "max_tokens": 4
}))]
pub struct ChatRequest {
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<crate::chat_input::ChatMessage>,
    /// Log-probabilities of the answer's tokens, with `top_logprobs` (0 to 20) alternatives.
    #[serde(default)]
    pub logprobs: bool,
    #[schema(maximum = 20)]
    pub top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    pub tools: crate::chat_input::Tools,
    #[serde(default)]
    pub quark: crate::knowledge::QuarkOptions,
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "request_id": "chatcmpl-0123456789abcdef0123456789abcdef",
    "rating": 1,
    "correction": "Hamlet is the Prince of Denmark."
}))]
pub struct FeedbackRequest {
    pub request_id: String,
    /// 1 (bad) to 5 (good).
    #[schema(minimum = 1, maximum = 5)]
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

/// [`TextInput`]'s schema: what is accepted (anything else is refused with 400).
pub(crate) fn text_input() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let one_of = OneOfBuilder::new()
        .item(text())
        .item(ArrayBuilder::new().items(text()));
    Schema::OneOf(one_of.build())
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
