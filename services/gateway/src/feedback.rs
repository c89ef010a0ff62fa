//! `POST /v1/feedback`: a rating, a correction, a preferred response or labels (`intent:<name>`
//! teaches the router's intent classifier) for a request id that any gateway served →
//! feedback.received.
//!
//! The gateway does not need to have served the request: the feedback carries the request id
//! and names the response's event (derived from the request id, see [`crate::served`]) as its
//! cause; the augmenter joins it to the response.served it has folded. Its prompt and response
//! are left empty for that join. An id no Quark gateway can have issued is rejected here (404).

use crate::api::{ApiError, ErrorBody, FeedbackRequest, Refusals};
use crate::routes::{authorise, body};
use crate::served::{is_request_id, response_event_id, scrub};
use crate::{Gateway, NAME};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use quark_events::{Event, EventHeader, FeedbackReceived, INTENT_LABEL, Id, Timestamp};
use std::sync::Arc;
use tracing::info;

/// The feedback event for `request`: caused by (and correlated with) the response it rates.
fn event(gateway: &Gateway, request: FeedbackRequest) -> FeedbackReceived {
    let response = response_event_id(&request.request_id);
    FeedbackReceived {
        header: EventHeader {
            event_id: Id::random(),
            occurred_at: Timestamp::now(),
            producer: NAME.to_string(),
            correlation_id: response,
            causation_id: Some(response),
        },
        feedback_id: Id::random(),
        // The model this gateway serves now: its best knowledge, for the counts per model;
        // the augmenter takes the one that served the response from response.served.
        model_id: gateway
            .served()
            .map(|s| s.model_id.to_string())
            .unwrap_or_default(),
        request_id: request.request_id,
        prompt: String::new(),
        response: String::new(),
        rating: request.rating,
        // Like response.served, the event carries no PII (the augmenter scrubs again, for
        // feedback other producers publish).
        correction: request.correction.as_deref().map(scrub),
        preferred_response: request.preferred_response.as_deref().map(scrub),
        labels: request.labels,
    }
}

fn validate(request: &FeedbackRequest) -> Result<(), ApiError> {
    if !(1..=5).contains(&request.rating) {
        return Err(ApiError::invalid("rating", "rating is 1 (bad) to 5 (good)"));
    }
    if request
        .correction
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        return Err(ApiError::invalid("correction", "the correction is empty"));
    }
    if request.labels.iter().any(|label| {
        label
            .strip_prefix(INTENT_LABEL)
            .is_some_and(|name| name.trim().is_empty())
    }) {
        return Err(ApiError::invalid(
            "labels",
            "an intent label names the intent: intent:<name>",
        ));
    }
    if !is_request_id(&request.request_id) {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "no gateway served a request with id '{}' (ids look like chatcmpl-<32 hex digits>)",
                request.request_id
            ),
            param: Some("request_id"),
        });
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/feedback", request_body = FeedbackRequest, security(("api_key" = [])), responses(
        (status = 202, description = "recorded as a feedback.received event", body = serde_json::Value),
        (status = 401, description = "no API key, or not one of gateway.api_keys", body = ErrorBody),
        Refusals,
))]
pub(crate) async fn feedback(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    parsed: Result<Json<FeedbackRequest>, JsonRejection>,
) -> Response {
    let result = async {
        authorise(&gateway, &headers)?;
        let request = body(parsed)?;
        validate(&request)?;
        let event = event(&gateway, request);
        let negative = event.is_negative();
        gateway
            .publisher
            .publish(&Event::FeedbackReceived(event.clone()))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("feedback not recorded: {e}"),
                )
            })?;
        info!(request = %event.request_id, feedback = %event.feedback_id, rating = event.rating, "feedback received");
        if let Some(served) = gateway.served() {
            gateway.count(served.model_id, |c| {
                c.feedback += 1;
                c.negative += i64::from(negative);
            });
        }
        Ok::<_, ApiError>((
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"feedback_id": event.feedback_id.to_string(), "event_id": event.header.event_id.to_string()})),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
