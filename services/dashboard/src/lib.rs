//! The operators' dashboard: a page served by Quark (no CDN, nothing fetched at run time) that
//! shows the loop live over server-sent events — each topic's messages and every consumer's
//! lag, the dead letters, the aliases and the latest alias moves — and redrives dead letters.
//! Reading is open (serve it on loopback); actions need one of the gateway's API keys.

mod snapshot;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use quark_events::bus::{BusConfig, Publisher, Redrive, dead_letters, redrive};
use quark_events::codec::default_resolver;
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use serde_json::json;
pub use snapshot::Snapshot;
use std::sync::Arc;
use std::time::Duration;

/// What the dashboard reads and acts on.
pub struct Dashboard {
    pub bus: BusConfig,
    pub db: DatabaseConnection,
    /// Keys that may act (the gateway's `api_keys`).
    pub api_keys: Vec<String>,
    /// How often the page is sent a new state.
    pub every: Duration,
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
        .route("/api/dead-letters/redrive", post(redrive_letters))
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
    match Snapshot::read(&d.bus, &d.db).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /api/stream`: the state every `every`, as server-sent events (`state`).
async fn stream(State(d): State<Arc<Dashboard>>) -> Response {
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(d.every));
    let events = ticks.then(move |_| {
        let d = d.clone();
        async move {
            let data = match Snapshot::read(&d.bus, &d.db).await {
                Ok(s) => serde_json::to_string(&s).unwrap_or_default(),
                Err(e) => json!({"error": e.to_string()}).to_string(),
            };
            Ok::<_, std::convert::Infallible>(SseEvent::default().event("state").data(data))
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
struct RedriveRequest {
    /// Letters by id, or every one not yet redriven.
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    operator: Option<String>,
    reason: Option<String>,
}

/// `POST /api/dead-letters/redrive` (API key): sends letters back to their source topic.
async fn redrive_letters(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    body: Json<RedriveRequest>,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !key.is_some_and(|k| d.api_keys.iter().any(|known| known == k)) {
        return failed(
            StatusCode::UNAUTHORIZED,
            "redriving needs an API key: Authorization: Bearer <key>",
        );
    }
    if body.ids.is_empty() && !body.all {
        return failed(
            StatusCode::BAD_REQUEST,
            "name the dead letters (ids) or ask for all",
        );
    }
    let bus = d.bus.clone();
    let letters =
        tokio::task::spawn_blocking(move || dead_letters(&bus, default_resolver().as_ref())).await;
    let letters = match letters {
        Ok(Ok(letters)) => letters,
        Ok(Err(e)) => return failed(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let chosen: Vec<_> = letters
        .into_iter()
        .filter(|l| l.redelivered.is_none() && (body.all || body.ids.contains(&l.id)))
        .collect();
    let publisher = match Publisher::new(&d.bus, "quark-dashboard") {
        Ok(p) => p,
        Err(e) => return failed(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let by = Redrive {
        operator: body.operator.as_deref().unwrap_or("dashboard"),
        reason: body.reason.as_deref(),
    };
    match redrive(&publisher, &chosen, by).await {
        Ok(records) => Json(json!({"redriven": records.len()})).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Serves `dashboard` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dashboard: Arc<Dashboard>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(dashboard))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
