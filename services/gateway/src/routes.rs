//! The HTTP routes.

use crate::api::{ApiError, ChatRequest, ErrorBody, Refusals, Sampling, StreamEvent};
use crate::chat_input::ChatMessage;
use crate::fleet::{Listed, unknown_model};
use crate::moderation::{Answered, generate_screened};
use crate::observed::{self, Timing};
use crate::reply::{Answer, Reply, Shape};
use crate::router::{Route, ShadowJob};
use crate::served::{self, Exchange, new_request_id};
use crate::stream::{Chunk, streamed};
use crate::{Gateway, Served, knowledge};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use quark_ml::chat::{self, Message, Role};
use quark_ml::generate::{GenerateOptions, TokenLogprob, prompt_logprobs};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.settings.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(crate::completions::completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/v1/moderations", post(crate::moderation::moderations))
        .route("/v1/feedback", post(crate::feedback::feedback))
        .route("/v1/admin/status", get(crate::admin::status))
        .route("/v1/admin/retrain", post(crate::admin::retrain))
        .route("/openapi.json", get(crate::openapi::document))
        .merge(quark_runtime::metrics::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// A JSON body, or the reason it is not one, as an OpenAI error: 400 for a body that is not
/// JSON or not the request's shape (axum says 415 and 422), 413 for one too large.
pub(crate) fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(t)| t).map_err(|rejection| {
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, rejection.body_text())
    })
}

fn with_request_id(request_id: &str, mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

pub(crate) fn authorise(gateway: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    gateway
        .keys
        .check(headers)
        .map_err(|refusal| ApiError::new(StatusCode::UNAUTHORIZED, refusal.message()))
}

fn now_s() -> i64 {
    quark_events::Timestamp::now().0 / 1000
}

fn model_object(listed: &Listed) -> serde_json::Value {
    serde_json::json!({
        "id": listed.model.model_id.to_string(),
        "object": "model",
        "created": listed.model.trained_at.0 / 1000,
        "owned_by": "quark",
        "aliases": listed.aliases,
        "loaded": listed.loaded,
    })
}

/// `GET /v1/models`: every model an alias points at, with its aliases.
#[utoipa::path(get, path = "/v1/models", responses(
        (status = 200, description = "the served models, with their aliases", body = serde_json::Value),
))]
async fn models(State(gateway): State<Arc<Gateway>>) -> Response {
    let data: Vec<_> = gateway.listing().iter().map(model_object).collect();
    Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{id}`: a served model by its id or by one of its aliases.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "a model id or alias")), responses(
        (status = 200, description = "the model", body = serde_json::Value),
        (status = 404, description = "no served model has this id or alias", body = ErrorBody),
))]
async fn model(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let alias = if id == "quark" { "champion" } else { &id };
    let found = gateway
        .listing()
        .into_iter()
        .find(|l| l.model.model_id.to_string() == id || l.aliases.iter().any(|a| a == alias));
    match found {
        Some(listed) => Json(model_object(&listed)).into_response(),
        None => unknown_model(&id).into_response(),
    }
}

fn options(
    gateway: &Gateway,
    sampling: Sampling,
    stop_tokens: Vec<u32>,
    scoring: Scoring,
) -> Result<GenerateOptions, ApiError> {
    let max = gateway.settings.max_tokens;
    let max_tokens = requested_tokens(gateway, &sampling);
    // With echo, no new token at all reads the prompt's log-probabilities alone.
    let least = usize::from(!scoring.echo);
    if max_tokens < least || max_tokens > max {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens must be between {least} and {max}"),
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
        logprobs: scoring.logprobs,
    })
}

/// What a request asks to read besides the answer.
#[derive(Clone, Copy, Default)]
pub(crate) struct Scoring {
    /// The prompt before the answer, its tokens' log-probabilities too with `logprobs`.
    pub echo: bool,
    /// Log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
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
pub(crate) struct Job {
    pub served: Arc<Served>,
    ids: Vec<u32>,
    pub options: GenerateOptions,
    /// With echo: the prompt's text, shown before the answer (with logprobs, its tokens'
    /// log-probabilities too).
    echo: Option<String>,
    /// What response.served will say of it.
    exchange: Exchange,
    sources: Option<serde_json::Value>,
    /// The alias that also answers it, unseen (shadow traffic).
    shadow: Option<String>,
}

/// A generation and, when asked, the log-probabilities of its prompt's tokens.
pub(crate) struct Outcome {
    pub answered: Answered,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    /// When the first piece of the answer was decided.
    first_text: Option<Instant>,
}

/// Runs a generation off the async workers, through the safety filter; with `pieces`, the
/// echoed prompt, then each piece of the answer as it is cleared, go there (a closed
/// receiver, i.e. a client that went away, cancels it). Publishes the response
/// (response.served, acknowledged before the reply ends; not for a request that only reads
/// its prompt) and counts the request for telemetry.
pub(crate) async fn run(
    gateway: Arc<Gateway>,
    job: &Job,
    pieces: Option<mpsc::Sender<Chunk>>,
) -> Result<Outcome, ApiError> {
    let started = Instant::now();
    let served = job.served.clone();
    let (ids, options, echo) = (job.ids.clone(), job.options.clone(), job.echo.clone());
    let model_id = served.model_id;
    let screen = gateway.screen();
    let prompt = job.exchange.prompt.clone();
    observed::load(&served);
    let outcome = tokio::task::spawn_blocking(move || {
        let prompt_logprobs = match (&echo, options.logprobs) {
            (Some(_), Some(top)) => Some(
                served
                    .engine
                    .with_model({
                        let ids = ids.clone();
                        move |model, _| prompt_logprobs(model, &ids, top)
                    })
                    .and_then(|read| read)
                    .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
            ),
            _ => None,
        };
        let send = |chunk: Chunk| match &pieces {
            Some(tx) if tx.blocking_send(chunk).is_err() => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        };
        if let Some(text) = echo {
            let _ = send(Chunk::echo(text, &ids, prompt_logprobs.as_deref()));
        }
        let asked = options.logprobs.is_some();
        let mut first_text = None;
        let answered = generate_screened(
            &served.engine,
            &ids,
            &options,
            screen.as_ref(),
            (&prompt, pieces.is_some()),
            |sent| {
                first_text.get_or_insert_with(Instant::now);
                send(Chunk::answer(sent, asked))
            },
        )?;
        Ok(Outcome {
            answered,
            prompt_logprobs,
            first_text,
        })
    })
    .await;
    let result = outcome.unwrap_or_else(|e| {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("generation failed: {e}"),
        ))
    });
    let latency = started.elapsed().as_secs_f64() * 1e3;
    let timing = Timing {
        started,
        first_text: result.as_ref().ok().and_then(|o| o.first_text),
    };
    observed::request(
        &job.served,
        timing,
        result.as_ref().ok().map(|o| &o.answered),
    );
    if let Ok(o) = &result
        && job.options.max_tokens > 0
    {
        served::publish(&gateway, &job.exchange, model_id, &o.answered, latency).await;
        if let Some(alias) = &job.shadow {
            tokio::spawn(gateway.clone().shadow(ShadowJob {
                alias: alias.clone(),
                live: job.served.clone(),
                ids: job.ids.clone(),
                options: job.options.clone(),
                exchange: job.exchange.clone(),
            }));
        }
    }
    gateway.count(model_id, |c| {
        c.requests += 1;
        c.latencies_ms.push(latency);
        match &result {
            Ok(o) => {
                let a = &o.answered;
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

/// A whole reply to the jobs (one a prompt or a choice): they run together, in one batch.
async fn whole(gateway: Arc<Gateway>, jobs: Vec<Job>, reply: Reply) -> Response {
    let runs = jobs.iter().map(|job| run(gateway.clone(), job, None));
    let outcomes = match futures::future::join_all(runs)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(outcomes) => outcomes,
        Err(e) => return e.into_response(),
    };
    let answers: Vec<Answer> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(job, o)| Answer {
            answered: &o.answered,
            prompt_logprobs: o.prompt_logprobs.as_deref(),
            echo: job.echo.as_deref().map(|text| (text, job.ids.as_slice())),
            tokenizer: &job.served.tokenizer,
        })
        .collect();
    let asked = jobs.iter().any(|j| j.options.logprobs.is_some());
    let ids: Vec<String> = jobs.iter().map(|j| j.exchange.request_id.clone()).collect();
    Json(reply.whole(&answers, asked, &ids)).into_response()
}

/// A request made ready for the model: what to generate from, and how.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub served: Arc<Served>,
    pub ids: Vec<u32>,
    /// The model or alias the request named.
    pub route: String,
    /// The prompt as feedback will quote it.
    pub prompt: String,
    pub messages: Vec<Message>,
    pub stop_tokens: Vec<u32>,
    pub sampling: Sampling,
    pub scoring: Scoring,
    pub sources: Option<serde_json::Value>,
    /// The router's decision, for a request that named `quark`.
    pub routed: Option<Route>,
}

impl Shape {
    fn endpoint(&self) -> (&'static str, &'static str) {
        match self {
            Shape::Text => ("cmpl", "completions"),
            Shape::Chat => ("chatcmpl", "chat"),
        }
    }
}

/// The job of a prepared request under `request_id`.
fn job(gateway: &Gateway, request_id: String, shape: &Shape, p: Prepared) -> Result<Job, ApiError> {
    let stream = p.sampling.stream;
    let mut sampling = p.sampling;
    if let Some(cap) = p.routed.as_ref().and_then(|r| r.max_tokens) {
        sampling.max_completion_tokens = Some(requested_tokens(gateway, &sampling).min(cap));
    }
    let options = options(gateway, sampling, p.stop_tokens, p.scoring)?;
    let exchange = Exchange {
        request_id,
        route: p.route,
        endpoint: shape.endpoint().1,
        prompt: p.prompt.clone(),
        messages: p.messages,
        streamed: stream,
        routing: p.routed.as_ref().map(|r| r.routing.clone()),
        shadow_of: None,
    };
    Ok(Job {
        served: p.served,
        ids: p.ids,
        options,
        echo: p.scoring.echo.then_some(p.prompt),
        exchange,
        sources: p.sources,
        shadow: p.routed.and_then(|r| r.shadow),
    })
}

/// Choices a request may ask for (`n`).
const MAX_CHOICES: usize = 8;

/// Each prepared request `n` times, in order (a prompt's choices together, as OpenAI numbers
/// them), each with its own seed: the request's, or one drawn, plus the choice's place.
fn each_choice(prepared: Vec<Prepared>) -> Result<Vec<Prepared>, ApiError> {
    let mut out = Vec::with_capacity(prepared.len());
    for p in prepared {
        let n = p.sampling.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES {
            return Err(ApiError::invalid(
                "n",
                format!("n must be between 1 and {MAX_CHOICES}"),
            ));
        }
        let seed = p.sampling.seed.unwrap_or_else(rand_seed);
        for j in 0..n as u64 {
            let mut choice = p.clone();
            choice.sampling.seed = Some(seed.wrapping_add(j));
            out.push(choice);
        }
    }
    Ok(out)
}

/// Answers prepared requests (one a prompt; a stream takes one) or their error, with the
/// first request id on the response.
pub(crate) async fn answer(
    gateway: Arc<Gateway>,
    shape: Shape,
    prepared: Result<Vec<Prepared>, ApiError>,
) -> Response {
    let prefix = shape.endpoint().0;
    let request_id = new_request_id(prefix);
    let response = async {
        let prepared = each_choice(prepared?)?;
        let include_usage = prepared
            .first()
            .and_then(|p| p.sampling.stream_options)
            .is_some_and(|o| o.include_usage);
        let stream = prepared.first().is_some_and(|p| p.sampling.stream);
        if stream && prepared.len() > 1 {
            return Err(ApiError::invalid(
                "stream",
                "a streamed request takes one prompt and n = 1",
            ));
        }
        let admitted = gateway.admit(prepared.len())?;
        let mut jobs = Vec::with_capacity(prepared.len());
        for (i, p) in prepared.into_iter().enumerate() {
            let id = if i == 0 {
                request_id.clone()
            } else {
                new_request_id(prefix)
            };
            jobs.push(job(&gateway, id, &shape, p)?);
        }
        let reply = Reply {
            id: request_id.clone(),
            model: jobs[0].served.model_id.to_string(),
            created: now_s(),
            shape,
            stream,
            sources: jobs[0].sources.clone(),
        };
        Ok::<_, ApiError>(match stream {
            true => streamed(
                gateway.clone(),
                jobs.remove(0),
                reply,
                include_usage,
                admitted,
            ),
            // The places are given back when `admitted` drops, once the reply is whole.
            false => whole(gateway.clone(), jobs, reply).await,
        })
    }
    .await;
    with_request_id(
        &request_id,
        response.unwrap_or_else(IntoResponse::into_response),
    )
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest, responses(
        (status = 200, description = "the answer; server-sent chunks with stream", content(
            (serde_json::Value = "application/json"),
            (StreamEvent = "text/event-stream")
        )),
        Refusals,
))]
async fn chat_completions(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    parsed: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let prepared = prepare_chat(&gateway, &headers, parsed).await;
    answer(gateway, Shape::Chat, prepared.map(|p| vec![p])).await
}

/// A chat request's log-probabilities: `logprobs`, with `top_logprobs` (0 to 20) alternatives.
fn chat_scoring(request: &ChatRequest) -> Result<Scoring, ApiError> {
    match (request.logprobs, request.top_logprobs) {
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        )),
        (_, Some(top)) if top > 20 => Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs must be between 0 and 20",
        )),
        (asked, top) => Ok(Scoring {
            echo: false,
            logprobs: asked.then(|| top.unwrap_or(0)),
        }),
    }
}

async fn prepare_chat(
    gateway: &Gateway,
    headers: &HeaderMap,
    parsed: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Prepared, ApiError> {
    let request = body(parsed)?;
    request.tools.refuse()?;
    let scoring = chat_scoring(&request)?;
    let asked: Vec<Message> = request
        .messages
        .into_iter()
        .map(ChatMessage::into_message)
        .collect::<Result<_, _>>()?;
    if asked.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let prompt = last_user_message(&asked);
    let (served, routed) = gateway.choose(&request.model, &prompt).await?;
    let wanted = routed
        .as_ref()
        .and_then(|r| r.retrieval)
        .unwrap_or_else(|| knowledge::wanted(&request.quark, headers));
    let knowledge = gateway
        .knowledge()
        .filter(|_| wanted && !prompt.trim().is_empty());
    let (messages, sources) = match knowledge {
        Some(k) => {
            let hits = knowledge::retrieve(k, &prompt, &request.quark).await?;
            // Room for the answer: what the request asks for, at most half the context.
            let reserve = requested_tokens(gateway, &request.sampling).min(served.context / 2);
            let fits = |m: &[Message]| {
                chat::prompt(&served.tokenizer, m)
                    .is_ok_and(|ids| ids.len() + reserve <= served.context)
            };
            let (messages, used) = knowledge::with_passages(&asked, hits, fits);
            (messages, Some(knowledge::sources(&used)))
        }
        None => (asked.clone(), None),
    };
    let ids = chat::prompt(&served.tokenizer, &messages)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let stop_tokens = chat::stop_tokens(&served.tokenizer);
    Ok(Prepared {
        served,
        ids,
        route: request.model,
        prompt,
        messages: asked,
        stop_tokens,
        sampling: request.sampling,
        scoring,
        sources,
        routed,
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
