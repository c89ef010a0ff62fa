//! The API key's routes: the gateway's status (the champion, the batch) and a manual retrain.

use crate::api::ApiError;
use crate::routes::authorise;
use crate::{Gateway, NAME};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use quark_events::{Event, RetrainRequested, RetrainTrigger};
use std::sync::Arc;

pub(crate) async fn status(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorise(&gateway, &headers) {
        return e.into_response();
    }
    let served = gateway.served();
    let batch = served.as_ref().map(|s| {
        let load = s.engine.load();
        serde_json::json!({
            "running": load.running,
            "waiting": load.waiting,
            "peak_running": load.peak_running,
            "decode_steps": load.decode_steps,
        })
    });
    Json(serde_json::json!({
        "champion": served.as_ref().map(|s| s.model_id.to_string()),
        "promoted_at": served.as_ref().map(|s| s.promoted_at),
        "instance": gateway.settings.instance,
        "batch": batch,
    }))
    .into_response()
}

pub(crate) async fn retrain(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
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
