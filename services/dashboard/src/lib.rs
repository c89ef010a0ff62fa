//! The operators' dashboard: a page served by Quark (no CDN, nothing fetched at run time) that
//! shows the loop live over server-sent events — the learning cycles and models, each topic's
//! rate and every consumer's lag over time, the dead letters, serving, and a browser of the
//! messages themselves — and acts: redrives dead letters, rolls back and promotes models, asks
//! for a retraining.
//! Reading is open (serve it on loopback); actions need one of the gateway's API keys.
//!
//! One tail reads every topic into an in-memory view as messages arrive, and a sampler reads
//! the topics' sizes and the consumers' positions each tick; a page's state is a copy of that
//! view, so serving it costs the same however busy the bus is.

mod actions;
mod schemas;
mod tail;
mod view;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use quark_api_keys::ApiKeys;
use quark_events::bus::{BusConfig, inspect_with, positions};
use quark_events::codec::default_resolver;
use quark_events::{SchemaResolver, Timestamp};
use quark_schema_registry::http::shown_url;
use rdkafka::consumer::BaseConsumer;
use sea_orm::DatabaseConnection;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
pub use view::{Snapshot, View};

/// What the dashboard reads and acts on.
pub struct Dashboard {
    bus: BusConfig,
    db: DatabaseConnection,
    /// Keys that may act (the gateway's `api_keys`).
    api_keys: ApiKeys,
    /// How often the page gets a new state.
    every: Duration,
    view: Arc<Mutex<View>>,
    /// Why the last sample of the topics failed, while it does.
    trouble: Mutex<Option<String>>,
    /// The schema registry's URL, when there is one.
    registry: Option<String>,
    /// Reads the writer schemas of messages framed by schema id or by fingerprint.
    resolver: Arc<dyn SchemaResolver>,
}

impl Dashboard {
    /// A dashboard of the cluster `bus` (positions in `db`) that sends a new state `every`
    /// and keeps the latest `keep` messages of each topic for the browser.
    pub fn new(
        bus: BusConfig,
        db: DatabaseConnection,
        api_keys: Vec<String>,
        every: Duration,
        keep: usize,
    ) -> Dashboard {
        Dashboard {
            bus,
            db,
            api_keys: ApiKeys::new(&api_keys),
            every,
            view: Arc::new(Mutex::new(View::new(keep))),
            trouble: Mutex::new(None),
            registry: None,
            resolver: default_resolver(),
        }
    }

    /// Decodes with `resolver` instead of the process's registry.
    pub fn with_resolver(mut self, resolver: Arc<dyn SchemaResolver>) -> Dashboard {
        self.resolver = resolver;
        self
    }

    /// Shows the subjects of the schema registry at `url` (empty: none).
    pub fn with_schema_registry(mut self, url: &str) -> Dashboard {
        self.registry = Some(url.to_string()).filter(|u| !u.is_empty());
        self
    }

    /// The state now, as the page gets it.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.view.lock().expect("view").snapshot();
        snapshot.error = self.trouble.lock().expect("trouble").clone();
        snapshot
    }

    /// Samples the topics' sizes (through `client`) and the consumers' positions into the view.
    async fn sample(&self, client: Arc<BaseConsumer>) {
        let states = tokio::task::spawn_blocking(move || inspect_with(&client)).await;
        let read = match (states, positions(&self.db).await) {
            (Ok(Ok(states)), Ok(positions)) => {
                let at = Timestamp::now().0;
                self.view
                    .lock()
                    .expect("view")
                    .sample(at, &states, &positions);
                None
            }
            (Ok(Err(e)), _) => Some(format!("bus: {e}")),
            (Err(e), _) => Some(format!("bus: {e}")),
            (_, Err(e)) => Some(format!("database: {e}")),
        };
        *self.trouble.lock().expect("trouble") = read;
    }
}

pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| {
                asset(
                    "text/html; charset=utf-8",
                    include_str!("../assets/index.html"),
                )
            }),
        )
        .route(
            "/app.js",
            get(|| asset("text/javascript", include_str!("../assets/app.js"))),
        )
        .route(
            "/app.css",
            get(|| asset("text/css", include_str!("../assets/app.css"))),
        )
        .route("/api/state", get(state))
        .route("/api/stream", get(stream))
        .route("/api/messages", get(messages))
        .route("/api/schemas", get(schemas))
        .route("/api/dead-letters/redrive", post(actions::redrive_letters))
        .route("/api/models/move", post(actions::move_alias))
        .route("/api/retrain", post(actions::retrain))
        .with_state(dashboard)
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn failed(status: StatusCode, message: impl ToString) -> Response {
    let body = json!({"error": {"message": message.to_string()}});
    (status, Json(body)).into_response()
}

/// `GET /api/state`: the loop now.
async fn state(State(d): State<Arc<Dashboard>>) -> Response {
    Json(d.snapshot()).into_response()
}

/// `GET /api/stream`: the state every tick, as server-sent events (`state`). A page that
/// reads slowly misses ticks rather than falling behind.
async fn stream(State(d): State<Arc<Dashboard>>) -> Response {
    let mut ticks = tokio::time::interval(d.every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let events = tokio_stream::wrappers::IntervalStream::new(ticks).map(move |_| {
        let data = serde_json::to_string(&d.snapshot()).unwrap_or_default();
        Ok::<_, std::convert::Infallible>(SseEvent::default().event("state").data(data))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /api/messages?topic&type&correlation&since_ms&until_ms&before&limit&order`: a page of
/// the messages held, decoded to JSON (either framing), newest first unless `order=asc`.
async fn messages(
    State(d): State<Arc<Dashboard>>,
    query: Result<Query<view::Query>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return failed(
            StatusCode::BAD_REQUEST,
            "query: topic, type, correlation (text); since_ms, until_ms, before, limit (numbers); order=asc",
        );
    };
    let page = d
        .view
        .lock()
        .expect("view")
        .page(&query, d.resolver.as_ref());
    Json(page).into_response()
}

/// `GET /api/schemas`: the registry's subjects, versions and compatibility.
async fn schemas(State(d): State<Arc<Dashboard>>) -> Response {
    let Some(registry) = &d.registry else {
        return failed(
            StatusCode::NOT_FOUND,
            "no schema registry is configured (schema_registry.url)",
        );
    };
    match schemas::subjects(registry).await {
        Ok(subjects) => {
            let registry = shown_url(registry);
            Json(json!({"registry": registry, "subjects": subjects})).into_response()
        }
        Err(e) => failed(StatusCode::BAD_GATEWAY, e),
    }
}

/// Serves `dashboard` on `listener` until `shutdown`, with its tail and sampler.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dashboard: Arc<Dashboard>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let stop = shutdown.child_token();
    let tail = tail::spawn(
        dashboard.bus.clone(),
        dashboard.resolver.clone(),
        dashboard.view.clone(),
        stop.clone(),
    );
    let client: Arc<BaseConsumer> = Arc::new(
        dashboard
            .bus
            .client_config("quark-dashboard-sampler")
            .create()
            .map_err(std::io::Error::other)?,
    );
    let sampler = {
        let d = dashboard.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(d.every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            while stop.run_until_cancelled(ticks.tick()).await.is_some() {
                d.sample(client.clone()).await;
            }
        })
    };
    let served = axum::serve(listener, router(dashboard))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    stop.cancel();
    let _ = sampler.await;
    let _ = tokio::task::spawn_blocking(move || tail.join()).await;
    served
}
