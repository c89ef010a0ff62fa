//! The API key's routes: the gateway's status (its models, their batches, the router's
//! intent classifier) and a manual retrain.

use crate::api::{ApiError, ErrorBody};
use crate::routes::authorise;
use crate::{Gateway, NAME, Served};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use quark_events::{Event, RetrainRequested, RetrainTrigger};
use std::sync::Arc;

#[utoipa::path(get, path = "/v1/admin/status", security(("api_key" = [])), responses(
        (status = 200, description = "the gateway's models, batches and intent classifier", body = serde_json::Value),
        (status = 401, description = "no API key, or not one of gateway.api_keys", body = ErrorBody),
))]
pub(crate) async fn status(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorise(&gateway, &headers) {
        return e.into_response();
    }
    let models: Vec<_> = gateway
        .listing()
        .iter()
        .map(|listed| {
            let batch = gateway.loaded(listed.model.model_id).map(|s| batch(&s));
            serde_json::json!({
                "model_id": listed.model.model_id.to_string(),
                "aliases": listed.aliases,
                "batch": batch,
            })
        })
        .collect();
    let champion = gateway.pointed("champion");
    Json(serde_json::json!({
        "champion": champion.as_ref().map(|p| p.model.model_id.to_string()),
        "promoted_at": champion.as_ref().map(|p| p.promoted_at),
        "instance": gateway.settings.instance,
        "models": models,
        "batch": gateway.served().map(|s| batch(&s)),
        // Its intents with their held-out scores, examples trained on and held out, accuracy.
        "intents": gateway.intents().map(|i| i.report.clone()),
    }))
    .into_response()
}

fn batch(served: &Served) -> serde_json::Value {
    let load = served.engine.load();
    serde_json::json!({
        "running": load.running,
        "waiting": load.waiting,
        "peak_running": load.peak_running,
        "decode_steps": load.decode_steps,
    })
}

#[utoipa::path(post, path = "/v1/admin/retrain", security(("api_key" = [])), responses(
        (status = 202, description = "a retrain.requested event for the improvement policy", body = serde_json::Value),
        (status = 401, description = "no API key, or not one of gateway.api_keys", body = ErrorBody),
        (status = 503, description = "no model is loaded yet, or the bus did not take the event", body = ErrorBody),
))]
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
