//! The page's actions, each with one of the API keys and recorded as events: redriving dead
//! letters (dlq.redriven), moving an alias by hand (promotion.requested, which the registry
//! answers with model.promoted or dead-letters with why it could not) and asking for a
//! retraining (retrain.requested, for the improvement policy, as `quark retrain` does).

use crate::{Dashboard, failed};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use quark_events::bus::{Publisher, Redrive, dead_letters, redrive};
use quark_events::{
    Event, EventHeader, Id, PromotionAction, PromotionRequested, RetrainRequested, RetrainTrigger,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;

/// Why an action is not carried out.
type Refusal = (StatusCode, String);

/// The body of an action, once its key is checked.
fn authorised<T: DeserializeOwned>(
    d: &Dashboard,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, Refusal> {
    d.api_keys
        .check(headers)
        .map_err(|refusal| (StatusCode::UNAUTHORIZED, refusal.message().to_string()))?;
    body.map(|Json(b)| b)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()))
}

fn publisher(d: &Dashboard) -> Result<Publisher, Refusal> {
    Publisher::new(&d.bus, "quark-dashboard")
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Letters by id, or every one not yet redriven.
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
    operator: Option<String>,
    reason: Option<String>,
}

/// `POST /api/dead-letters/redrive`: sends letters back to their source topic.
pub async fn redrive_letters(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    body: Result<Json<RedriveRequest>, JsonRejection>,
) -> Response {
    let body: RedriveRequest = match authorised(&d, &headers, body) {
        Ok(b) => b,
        Err((status, why)) => return failed(status, why),
    };
    if body.ids.is_empty() && !body.all {
        return failed(
            StatusCode::BAD_REQUEST,
            "name the dead letters (ids) or ask for all",
        );
    }
    let (bus, resolver) = (d.bus.clone(), d.resolver.clone());
    let letters = tokio::task::spawn_blocking(move || dead_letters(&bus, resolver.as_ref())).await;
    let letters = match letters {
        Ok(Ok(letters)) => letters,
        Ok(Err(e)) => return failed(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let chosen: Vec<_> = letters
        .into_iter()
        .filter(|l| l.redelivered.is_none() && (body.all || body.ids.contains(&l.id)))
        .collect();
    let publisher = match publisher(&d) {
        Ok(p) => p,
        Err((status, why)) => return failed(status, why),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// `promote` (needs `model_id`) or `rollback`.
    action: PromotionAction,
    model_id: Option<Id>,
    /// A named alias; the champion without one.
    alias: Option<String>,
    operator: Option<String>,
    reason: Option<String>,
}

/// `POST /api/models/move`: asks the registry to promote a model or roll an alias back. The
/// answer comes on the bus (the page's timeline shows the move, or the refusal as a dead
/// letter); this returns the request's id (202).
pub async fn move_alias(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    body: Result<Json<MoveRequest>, JsonRejection>,
) -> Response {
    let body: MoveRequest = match authorised(&d, &headers, body) {
        Ok(b) => b,
        Err((status, why)) => return failed(status, why),
    };
    if body.action == PromotionAction::Promote && body.model_id.is_none() {
        return failed(StatusCode::BAD_REQUEST, "promote needs the model_id");
    }
    let request = PromotionRequested {
        header: EventHeader::root("quark-dashboard"),
        action: body.action,
        model_id: body.model_id,
        alias_name: body.alias.filter(|a| !a.is_empty() && a != "champion"),
        operator: body.operator.unwrap_or_else(|| "dashboard".into()),
        reason: body.reason.filter(|r| !r.is_empty()),
    };
    asked(&d, Event::PromotionRequested(request)).await
}

/// Publishes `request` and answers 202 with its id.
async fn asked(d: &Dashboard, request: Event) -> Response {
    let publisher = match publisher(d) {
        Ok(p) => p,
        Err((status, why)) => return failed(status, why),
    };
    let id = request.header().event_id;
    match publisher.publish(&request).await {
        Ok(_) => (StatusCode::ACCEPTED, Json(json!({"requested": id}))).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainRequest {
    operator: Option<String>,
    reason: Option<String>,
}

/// `POST /api/retrain`: asks the improvement policy for a retraining now (trigger `manual`).
pub async fn retrain(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    body: Result<Json<RetrainRequest>, JsonRejection>,
) -> Response {
    let body: RetrainRequest = match authorised(&d, &headers, body) {
        Ok(b) => b,
        Err((status, why)) => return failed(status, why),
    };
    let operator = body.operator.unwrap_or_else(|| "dashboard".into());
    let reason = match body.reason.filter(|r| !r.is_empty()) {
        Some(reason) => format!("{operator}: {reason}"),
        None => format!("{operator}: requested on the dashboard"),
    };
    let request = RetrainRequested::to_policy("quark-dashboard", RetrainTrigger::Manual, &reason);
    asked(&d, Event::RetrainRequested(request)).await
}
