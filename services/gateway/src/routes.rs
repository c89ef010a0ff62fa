//! The HTTP routes.

use crate::api::{ApiError, ChatRequest, CompletionRequest, Sampling, Usage};
use crate::moderation::{Answered, generate_screened};
use crate::served::{self, Exchange, new_request_id};
use crate::{Gateway, NAME, Served, knowledge};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use quark_events::{Event, RetrainRequested, RetrainTrigger};
use quark_ml::chat::{self, Message, Role};
use quark_ml::generate::GenerateOptions;
use quark_ml::tokenizer::END_OF_TEXT;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.settings.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/v1/moderations", post(crate::moderation::moderations))
        .route("/v1/feedback", post(crate::feedback::feedback))
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/retrain", post(retrain))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// A JSON body, or the reason it is not one, as an OpenAI error.
pub(crate) fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed
        .map(|Json(t)| t)
        .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))
}

fn with_request_id(request_id: &str, mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

pub(crate) fn authorise(gateway: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match key {
        Some(key) if gateway.settings.api_keys.iter().any(|k| k == key) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid API key")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs an API key: Authorization: Bearer <key>",
        )),
    }
}

fn now_s() -> i64 {
    quark_events::Timestamp::now().0 / 1000
}

async fn models(State(gateway): State<Arc<Gateway>>) -> Response {
    let data: Vec<_> = gateway
        .served()
        .map(|s| serde_json::json!({"id": s.model_id.to_string(), "object": "model", "created": s.created, "owned_by": "quark"}))
        .into_iter()
        .collect();
    Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// The served model, if the request names it (its id, `champion` or `quark`).
fn resolve(gateway: &Gateway, model: &str) -> Result<Arc<Served>, ApiError> {
    let served = gateway.served().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no model is promoted yet: the first one is still training",
        )
    })?;
    if model == served.model_id.to_string() || model == "champion" || model == "quark" {
        Ok(served)
    } else {
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model '{model}' does not exist; GET /v1/models lists the one served"
            ),
            param: Some("model"),
        })
    }
}

fn options(
    gateway: &Gateway,
    sampling: Sampling,
    stop_tokens: Vec<u32>,
) -> Result<GenerateOptions, ApiError> {
    let max = gateway.settings.max_tokens;
    let max_tokens = requested_tokens(gateway, &sampling);
    if max_tokens == 0 || max_tokens > max {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens must be between 1 and {max}"),
        ));
    }
    let temperature = sampling.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be between 0 and 2",
        ));
    }
    if let Some(p) = sampling.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
    }
    if sampling.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let stop = sampling.stop.into_vec();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "up to 4 non-empty stop sequences",
        ));
    }
    Ok(GenerateOptions {
        max_tokens,
        temperature,
        top_k: None,
        top_p: sampling.top_p,
        stop,
        stop_tokens,
        seed: sampling.seed.unwrap_or_else(rand_seed),
        use_cache: true,
    })
}

/// The tokens a request asks to generate (the default when it does not say).
fn requested_tokens(gateway: &Gateway, sampling: &Sampling) -> usize {
    let max = gateway.settings.max_tokens;
    sampling
        .max_completion_tokens
        .or(sampling.max_tokens)
        .unwrap_or(max.min(128))
}

fn rand_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// What one request asks the model for.
struct Job {
    served: Arc<Served>,
    ids: Vec<u32>,
    options: GenerateOptions,
    /// What response.served will say of it.
    exchange: Exchange,
}

/// Runs a generation off the async workers, through the safety filter; pieces of text go to
/// `pieces` as they are cleared (a closed receiver, i.e. a client that went away, cancels
/// it). Publishes the response (response.served, acknowledged before the reply ends) and
/// counts the request for telemetry.
async fn run(
    gateway: Arc<Gateway>,
    job: Job,
    pieces: Option<mpsc::Sender<String>>,
) -> Result<Answered, ApiError> {
    let started = Instant::now();
    let Job {
        served,
        ids,
        options,
        exchange,
    } = job;
    let model_id = served.model_id;
    let screen = gateway.screen();
    let prompt = exchange.prompt.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let model = served.model.lock().unwrap_or_else(|e| e.into_inner());
        let streaming = pieces.is_some();
        generate_screened(
            &model,
            &served.tokenizer,
            &ids,
            &options,
            screen.as_ref(),
            (&prompt, streaming),
            |text| match &pieces {
                Some(tx) if tx.blocking_send(text.to_string()).is_err() => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            },
        )
    })
    .await;
    let result = outcome.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("generation failed: {e}"),
        ))
    });
    let latency = started.elapsed().as_secs_f64() * 1e3;
    if let Ok(answered) = &result {
        served::publish(&gateway, &exchange, model_id, answered, latency).await;
    }
    gateway.count(model_id, |c| {
        c.requests += 1;
        c.latencies_ms.push(latency);
        match &result {
            Ok(a) => {
                c.tokens += a.generation.tokens.len() as i64;
                c.blocked += a.blocked() as i64;
                c.flagged += !a.filtered.is_empty() as i64;
            }
            Err(e) if e.status.is_server_error() => c.errors += 1,
            Err(_) => {}
        }
    });
    result
}

enum Shape {
    Text,
    Chat,
}

impl Shape {
    fn object(&self, stream: bool) -> &'static str {
        match (self, stream) {
            (Shape::Text, _) => "text_completion",
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
        }
    }

    fn choice(&self, text: &str, finish: Option<&str>, stream: bool) -> serde_json::Value {
        match (self, stream) {
            (Shape::Text, _) => {
                serde_json::json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
            (Shape::Chat, false) => {
                serde_json::json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish})
            }
            (Shape::Chat, true) => {
                serde_json::json!({"index": 0, "delta": if finish.is_some() { serde_json::json!({}) } else { serde_json::json!({"role": "assistant", "content": text}) }, "logprobs": null, "finish_reason": finish})
            }
        }
    }
}

/// Builds the response bodies of one request.
struct Reply {
    id: String,
    model: String,
    created: i64,
    shape: Shape,
    stream: bool,
    /// `{"sources": [...]}` when the answer was retrieval-augmented (or tried to be); it goes
    /// in the last body under `"quark"`.
    sources: Option<serde_json::Value>,
}

impl Reply {
    fn body(&self, text: &str, end: Option<(&Answered, Usage)>) -> serde_json::Value {
        let finish = end.as_ref().map(|(a, _)| a.finish_reason());
        let mut body = serde_json::json!({
            "id": self.id,
            "object": self.shape.object(self.stream),
            "created": self.created,
            "model": self.model,
            "choices": [self.shape.choice(text, finish, self.stream)],
            "usage": end.as_ref().map(|(_, usage)| usage),
        });
        let Some((answered, _)) = end else {
            return body;
        };
        let mut quark = self
            .sources
            .clone()
            .unwrap_or_else(|| serde_json::json!({}));
        if !answered.filtered.is_empty() {
            quark["moderation"] = serde_json::json!(answered.filtered);
        }
        if quark.as_object().is_some_and(|o| !o.is_empty()) {
            body["quark"] = quark;
        }
        body
    }
}

async fn respond(
    gateway: Arc<Gateway>,
    job: Job,
    shape: Shape,
    stream: bool,
    sources: Option<serde_json::Value>,
) -> Response {
    let reply = Arc::new(Reply {
        id: job.exchange.request_id.clone(),
        model: job.served.model_id.to_string(),
        created: now_s(),
        shape,
        stream,
        sources,
    });
    if !stream {
        return match run(gateway, job, None).await {
            Ok(a) => {
                let g = &a.generation;
                let usage = Usage::new(g.prompt_tokens, g.tokens.len());
                Json(reply.body(&g.text, Some((&a, usage)))).into_response()
            }
            Err(e) => e.into_response(),
        };
    }
    let (tx, rx) = mpsc::channel::<String>(64);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(run(gateway, job, Some(tx)).await);
    });
    let pieces = {
        let reply = reply.clone();
        tokio_stream::wrappers::ReceiverStream::new(rx).map(move |text| {
            Ok::<_, std::convert::Infallible>(
                SseEvent::default().data(reply.body(&text, None).to_string()),
            )
        })
    };
    // The last chunk carries the finish reason and usage (or the error), then [DONE].
    let end = futures::stream::once(async move {
        let last = match done_rx.await {
            Ok(Ok(a)) => {
                let usage = Usage::new(a.generation.prompt_tokens, a.generation.tokens.len());
                reply.body("", Some((&a, usage)))
            }
            Ok(Err(e)) => serde_json::json!({"error": {"message": e.message, "type": "server_error", "param": e.param, "code": null}}),
            Err(_) => serde_json::json!({"error": {"message": "generation stopped", "type": "server_error", "param": null, "code": null}}),
        };
        futures::stream::iter([
            Ok(SseEvent::default().data(last.to_string())),
            Ok(SseEvent::default().data("[DONE]")),
        ])
    })
    .flatten();
    Sse::new(pieces.chain(end))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A request made ready for the model: what to generate from, and how.
struct Prepared {
    served: Arc<Served>,
    ids: Vec<u32>,
    /// The model or alias the request named.
    route: String,
    /// The prompt as feedback will quote it.
    prompt: String,
    messages: Vec<Message>,
    stop_tokens: Vec<u32>,
    sampling: Sampling,
    sources: Option<serde_json::Value>,
}

/// Answers a prepared request (or its error), with the request id on the response.
async fn answer(
    gateway: Arc<Gateway>,
    request_id: String,
    shape: Shape,
    prepared: Result<Prepared, ApiError>,
) -> Response {
    let response = async {
        let p = prepared?;
        let stream = p.sampling.stream;
        let options = options(&gateway, p.sampling, p.stop_tokens)?;
        let exchange = Exchange {
            request_id: request_id.clone(),
            route: p.route,
            endpoint: match shape {
                Shape::Text => "completions",
                Shape::Chat => "chat",
            },
            prompt: p.prompt,
            messages: p.messages,
            streamed: stream,
        };
        let job = Job {
            served: p.served,
            ids: p.ids,
            options,
            exchange,
        };
        let sources = p.sources;
        Ok::<_, ApiError>(respond(gateway.clone(), job, shape, stream, sources).await)
    }
    .await;
    with_request_id(
        &request_id,
        response.unwrap_or_else(IntoResponse::into_response),
    )
}

async fn completions(
    State(gateway): State<Arc<Gateway>>,
    parsed: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let prepared = (|| {
        let request = body(parsed)?;
        let served = resolve(&gateway, &request.model)?;
        let ids = served
            .tokenizer
            .encode(request.prompt.as_str(), false)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?
            .get_ids()
            .to_vec();
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        let stop_tokens = served
            .tokenizer
            .token_to_id(END_OF_TEXT)
            .into_iter()
            .collect();
        Ok(Prepared {
            served,
            ids,
            route: request.model,
            prompt: request.prompt,
            messages: vec![],
            stop_tokens,
            sampling: request.sampling,
            sources: None,
        })
    })();
    answer(gateway, new_request_id("cmpl"), Shape::Text, prepared).await
}

async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    parsed: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let prepared = prepare_chat(&gateway, &headers, parsed).await;
    answer(gateway, new_request_id("chatcmpl"), Shape::Chat, prepared).await
}

async fn prepare_chat(
    gateway: &Gateway,
    headers: &HeaderMap,
    parsed: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Prepared, ApiError> {
    let request = body(parsed)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let served = resolve(gateway, &request.model)?;
    let prompt = last_user_message(&request.messages);
    let knowledge = gateway
        .knowledge()
        .filter(|_| knowledge::wanted(&request.quark, headers) && !prompt.trim().is_empty());
    let (messages, sources) = match knowledge {
        Some(k) => {
            let hits = knowledge::retrieve(k, &prompt, &request.quark).await?;
            // Room for the answer: what the request asks for, at most half the context.
            let reserve = requested_tokens(gateway, &request.sampling).min(served.context / 2);
            let fits = |m: &[Message]| {
                chat::prompt(&served.tokenizer, m)
                    .is_ok_and(|ids| ids.len() + reserve <= served.context)
            };
            let (messages, used) = knowledge::with_passages(&request.messages, hits, fits);
            (messages, Some(knowledge::sources(&used)))
        }
        None => (request.messages.clone(), None),
    };
    let ids = chat::prompt(&served.tokenizer, &messages)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let stop_tokens = chat::stop_tokens(&served.tokenizer);
    Ok(Prepared {
        served,
        ids,
        route: request.model,
        prompt,
        messages: request.messages,
        stop_tokens,
        sampling: request.sampling,
        sources,
    })
}

fn last_user_message(messages: &[Message]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

async fn status(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorise(&gateway, &headers) {
        return e.into_response();
    }
    let served = gateway.served();
    Json(serde_json::json!({
        "champion": served.as_ref().map(|s| s.model_id.to_string()),
        "promoted_at": served.as_ref().map(|s| s.promoted_at),
        "instance": gateway.settings.instance,
    }))
    .into_response()
}

async fn retrain(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorise(&gateway, &headers) {
        return e.into_response();
    }
    let event = Event::RetrainRequested(RetrainRequested::to_policy(
        NAME,
        RetrainTrigger::Manual,
        "requested through the gateway",
    ));
    match gateway.publisher.publish(&event).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"event_id": event.header().event_id.to_string()})),
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
