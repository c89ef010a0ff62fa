//! The gateway: an OpenAI-compatible HTTP API over every model an alias points at.
//!
//! - `POST /v1/completions`, `POST /v1/chat/completions` (JSON, or server-sent events with
//!   `"stream": true`), `GET /v1/models`, `GET /v1/models/{id}`; errors in OpenAI's shape;
//!   every response carries its request id (`x-request-id` and the body's `id`). Prompt
//!   lists, `echo`, `logprobs` (`completions`, `logprobs`), chat content parts and the
//!   developer role (`chat_input`).
//! - Every response (JSON or streamed) → response.served (prompt, messages, response, PII
//!   scrubbed; model, route, tokens, latency, instance), published and acknowledged before the
//!   reply ends, so feedback can refer to it from any gateway.
//! - `POST /v1/feedback` (API key): a rating, a correction or a preferred response for a
//!   request id served by any gateway → feedback.received, caused by that response's event
//!   (the augmenter joins the two); an id no gateway can have issued gets 404.
//! - `GET /v1/admin/status`, `POST /v1/admin/retrain` (API key).
//! - Several models at once (`fleet`): every alias (champion, challenger, previous, named) is
//!   served, within a memory budget; a request's `model` names an alias or a model id. Hot
//!   swap: on model.promoted the new model is loaded beside the old one and replaces it;
//!   requests in flight finish on the model they started with. The promotion carries the
//!   checkpoint; the gateway keeps the aliases in its own table (`gateway_lineage`), so a
//!   restarted gateway serves them at start without asking any other service.
//! - Moderation (`moderation`): prompts and answers read by the learnt safety classifier,
//!   blocked, redacted or flagged per category; `POST /v1/moderations` in OpenAI's shape.
//! - Telemetry: per window and model, requests, errors, latency percentiles, tokens,
//!   requests blocked and flagged by moderation, and feedback → telemetry.reported.

mod admin;
pub mod api;
mod chat_input;
mod completions;
mod embeddings;
mod feedback;
mod fleet;
pub mod intents;
pub mod knowledge;
mod logprobs;
pub mod moderation;
mod observed;
pub mod openapi;
mod reply;
mod router;
mod routes;
pub mod served;
mod stream;

use async_trait::async_trait;
use axum::serve::ListenerExt;
use quark_events::bus::{Handler, HandlerError, Publisher};
use quark_events::{Event, EventHeader, EventKind, Id, TelemetryReported, Timestamp};
use quark_lineage::Lineage;
use quark_ml::Tokenizer;
use quark_ml::batch::{BatchLimits, Engine};
use quark_runtime::ArtifactStore;
use quark_runtime::config::GatewaySettings;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub const NAME: &str = "gateway";
/// The gateway's own projection: the champion it serves (from model.promoted).
pub const LINEAGE: Lineage = Lineage::new(NAME);

/// A loaded model. Its generations run in one continuous batch on a thread that owns the
/// model (`quark_ml::batch`); anything else on the model runs there between decode steps.
pub struct Served {
    pub model_id: Id,
    /// Models trained with one tokenizer read each other's token ids.
    pub tokenizer_id: Id,
    pub engine: Engine,
    /// The model's context, in tokens.
    pub context: usize,
    pub tokenizer: Tokenizer,
    pub created: i64,
}

#[derive(Default)]
struct Counts {
    requests: i64,
    errors: i64,
    latencies_ms: Vec<f64>,
    tokens: i64,
    blocked: i64,
    flagged: i64,
    feedback: i64,
    negative: i64,
}

pub struct Gateway {
    pub settings: GatewaySettings,
    /// Who may send feedback and act through /v1/admin.
    keys: quark_api_keys::ApiKeys,
    store: Arc<ArtifactStore>,
    models_dir: PathBuf,
    db: DatabaseConnection,
    publisher: Publisher,
    fleet: Mutex<fleet::Fleet>,
    loading: tokio::sync::Mutex<()>,
    knowledge: std::sync::OnceLock<knowledge::Knowledge>,
    screen: std::sync::OnceLock<Arc<moderation::Screen>>,
    /// The router's intent classifier, replaced when it is retrained.
    intents: std::sync::RwLock<Option<Arc<intents::Intents>>>,
    intent_learner: std::sync::OnceLock<Arc<intents::IntentLearner>>,
    window: Mutex<(Timestamp, HashMap<Id, Counts>)>,
    /// Places for generations in flight (`gateway.max_in_flight`).
    admission: Arc<tokio::sync::Semaphore>,
}

impl Gateway {
    pub fn new(
        settings: GatewaySettings,
        store: Arc<ArtifactStore>,
        data_dir: &std::path::Path,
        db: DatabaseConnection,
        publisher: Publisher,
    ) -> Arc<Gateway> {
        // Its serving metrics need the process's recorder (installed once).
        quark_runtime::metrics::handle();
        Arc::new(Gateway {
            keys: quark_api_keys::ApiKeys::new(&settings.api_keys),
            admission: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight)),
            settings,
            store,
            models_dir: data_dir.join("models"),
            db,
            publisher,
            fleet: Mutex::default(),
            loading: tokio::sync::Mutex::new(()),
            knowledge: std::sync::OnceLock::new(),
            screen: std::sync::OnceLock::new(),
            intents: std::sync::RwLock::default(),
            intent_learner: std::sync::OnceLock::new(),
            window: Mutex::new((Timestamp::now(), HashMap::new())),
        })
    }

    /// Takes `n` places for generations, or refuses with 429 when fewer are free.
    pub(crate) fn admit(
        &self,
        n: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, api::ApiError> {
        let refused = || {
            metrics::counter!("quark_gateway_busy_total").increment(1);
            api::ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this gateway is answering its limit of {} generations; retry shortly",
                    self.settings.max_in_flight
                ),
            )
        };
        let n = u32::try_from(n).map_err(|_| refused())?;
        self.admission
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| refused())
    }

    /// Answers chat from `knowledge` from now on, and serves its embeddings (once: a second
    /// call is ignored).
    pub fn attach_knowledge(&self, knowledge: knowledge::Knowledge) {
        let _ = self.knowledge.set(knowledge);
    }

    pub fn knowledge(&self) -> Option<&knowledge::Knowledge> {
        self.knowledge.get()
    }

    /// Reads prompts and answers with `screen` from now on (once: a second call is ignored).
    pub fn attach_screen(&self, screen: moderation::Screen) {
        let _ = self.screen.set(Arc::new(screen));
    }

    pub fn screen(&self) -> Option<Arc<moderation::Screen>> {
        self.screen.get().cloned()
    }

    fn batch_limits(&self) -> BatchLimits {
        let b = self.settings.batch;
        BatchLimits {
            max_requests: b.max_requests,
            max_tokens: b.max_tokens,
            max_prefill_tokens: b.max_prefill_tokens,
            threads: b.threads,
        }
    }

    fn count(&self, model_id: Id, update: impl FnOnce(&mut Counts)) {
        let mut guard = self.window.lock().unwrap_or_else(|e| e.into_inner());
        update(guard.1.entry(model_id).or_default());
    }

    /// Closes the telemetry window: one telemetry.reported per model that saw traffic.
    pub async fn report(&self) -> Result<usize, quark_events::bus::BusError> {
        let (start, counts) = {
            let mut guard = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let start = std::mem::replace(&mut guard.0, Timestamp::now());
            (start, std::mem::take(&mut guard.1))
        };
        let end = Timestamp::now();
        let events: Vec<Event> = counts
            .into_iter()
            .map(|(model_id, c)| {
                let p = |q| quark_ml::metrics::percentile(&c.latencies_ms, q);
                Event::TelemetryReported(TelemetryReported {
                    header: EventHeader::root(NAME),
                    model_id,
                    instance: self.settings.instance.clone(),
                    window_start: start,
                    window_end: end,
                    requests: c.requests,
                    errors: c.errors,
                    latency_p50_ms: p(0.5),
                    latency_p95_ms: p(0.95),
                    latency_p99_ms: p(0.99),
                    tokens_generated: c.tokens,
                    blocked: c.blocked,
                    flagged: c.flagged,
                    feedback: c.feedback,
                    negative_feedback: c.negative,
                })
            })
            .collect();
        self.publisher.publish_all(&events).await?;
        Ok(events.len())
    }

    /// Serves HTTP on `listener` and reports telemetry until `shutdown`; requests in flight
    /// are finished first.
    pub async fn run(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        if let Err(e) = self.serve_aliases().await {
            warn!(error = %format!("{e:#}"), "cannot load the champion yet");
        }
        let reporter = {
            let gateway = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let period =
                    std::time::Duration::from_millis(gateway.settings.telemetry_window_ms.max(100));
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = ticks.tick() => {}
                    }
                    if let Err(e) = gateway.report().await {
                        warn!(error = %e, "telemetry not sent");
                    }
                }
            })
        };
        info!(address = %listener.local_addr()?, "gateway listening");
        // Streamed pieces are small writes: without TCP_NODELAY the first one waits for the
        // client's delayed ACK (about 40 ms) before it leaves.
        let listener = listener.tap_io(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                warn!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, routes::router(self.clone()))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        let _ = reporter.await;
        self.report().await.ok();
        Ok(())
    }
}

/// Follows model.promoted, every alias move (see [`fleet`]), and intents datasets and the
/// documents forgotten from them, which retrain the router's classifier (see [`intents`]). Each gateway instance is its own
/// consumer group (`gateway-<instance>`): every instance sees every event.
pub struct Follower {
    pub gateway: Arc<Gateway>,
    pub name: String,
}

#[async_trait]
impl Handler for Follower {
    fn name(&self) -> &str {
        &self.name
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![
            EventKind::ModelPromoted,
            EventKind::DatasetPrepared,
            EventKind::DocumentForgotten,
        ]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        match event {
            Event::ModelPromoted(p) => self
                .gateway
                .follow(p)
                .await
                .map_err(|e| HandlerError::Transient(format!("{e:#}")))?,
            Event::DatasetPrepared(d) if d.kind == quark_events::DatasetKind::Intents => {
                self.gateway.learn_intents(Some(d), None).await?
            }
            Event::DocumentForgotten(f) => self.gateway.forget_intent(f).await?,
            _ => {}
        }
        Ok(vec![])
    }

    /// Remembers every alias, intents dataset and forgotten document in the gateway's own
    /// table, with the offset: a restarted gateway resumes after this event and serves the
    /// aliases from the table.
    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        LINEAGE.apply(txn, event).await
    }
}
