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

/// Why an action is not carried out, answered in the API's error shape.
pub struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        failed(self.0, self.1)
    }
}

type Reply = Result<Response, Refused>;

/// The body of an action, once its key is checked.
fn authorised<T: DeserializeOwned>(
    d: &Dashboard,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, Refused> {
    d.api_keys
        .check(headers)
        .map_err(|refusal| Refused(StatusCode::UNAUTHORIZED, refusal.message().into()))?;
    body.map(|Json(b)| b)
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, e.body_text()))
}

fn publisher(d: &Dashboard) -> Result<Publisher, Refused> {
    Publisher::new(&d.bus, "quark-dashboard")
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
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
) -> Reply {
    let body: RedriveRequest = authorised(&d, &headers, body)?;
    if body.ids.is_empty() && !body.all {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "name the dead letters (ids) or ask for all".into(),
        ));
    }
    let (bus, resolver) = (d.bus.clone(), d.resolver.clone());
    let letters = tokio::task::spawn_blocking(move || dead_letters(&bus, resolver.as_ref()))
        .await
        .map_err(|e| Refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let chosen: Vec<_> = letters
        .into_iter()
        .filter(|l| l.redelivered.is_none() && (body.all || body.ids.contains(&l.id)))
        .collect();
    let publisher = publisher(&d)?;
    let by = Redrive {
        operator: body.operator.as_deref().unwrap_or("dashboard"),
        reason: body.reason.as_deref(),
    };
    let records = redrive(&publisher, &chosen, by)
        .await
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({"redriven": records.len()})).into_response())
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
) -> Reply {
    let body: MoveRequest = authorised(&d, &headers, body)?;
    if body.action == PromotionAction::Promote && body.model_id.is_none() {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "promote needs the model_id".into(),
        ));
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
async fn asked(d: &Dashboard, request: Event) -> Reply {
    let id = request.header().event_id;
    publisher(d)?
        .publish(&request)
        .await
        .map_err(|e| Refused(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"requested": id}))).into_response())
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
) -> Reply {
    let body: RetrainRequest = authorised(&d, &headers, body)?;
    let operator = body.operator.unwrap_or_else(|| "dashboard".into());
    let reason = match body.reason.filter(|r| !r.is_empty()) {
        Some(reason) => format!("{operator}: {reason}"),
        None => format!("{operator}: requested on the dashboard"),
    };
    let request = RetrainRequested::to_policy("quark-dashboard", RetrainTrigger::Manual, &reason);
    asked(&d, Event::RetrainRequested(request)).await
}
