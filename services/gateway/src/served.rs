//! Served responses as events (response.served), and the request ids they are known by.
//!
//! A request id is `cmpl-` or `chatcmpl-` and 32 hex digits. The response.served event of a
//! request has an id derived from the request id alone, so any gateway that receives feedback
//! for it can name that event as the feedback's cause (and its correlation) without having
//! seen it: feedback and response share a partition key, and one consumer sees both in order.

use crate::Gateway;
use crate::moderation::Answered;
use quark_curate::pii;
use quark_events::{EventHeader, Id, ResponseServed, Routing, ServedMessage, Timestamp};
use quark_ml::chat::Message;
use std::time::Instant;
use tracing::{debug, warn};

/// The namespace response event ids are derived in.
const RESPONSES: Id = Id(uuid::Uuid::from_u128(
    0x5a0e_7f3c_91b2_4d6e_8c0a_3f1d_2b9e_6a47,
));

const PREFIXES: [&str; 2] = ["cmpl", "chatcmpl"];

pub(crate) fn new_request_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Whether a Quark gateway can have issued `id`.
pub fn is_request_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(prefix, rest)| {
        PREFIXES.contains(&prefix)
            && rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The id of the response.served event of request `request_id`.
pub fn response_event_id(request_id: &str) -> Id {
    Id::derived(RESPONSES, request_id)
}

/// The header of the response.served of `request_id`: the first event of its chain.
pub fn response_header(request_id: &str, producer: &str) -> EventHeader {
    let event_id = response_event_id(request_id);
    EventHeader {
        event_id,
        occurred_at: Timestamp::now(),
        producer: producer.to_string(),
        correlation_id: event_id,
        causation_id: None,
    }
}

/// What the gateway knows of one request when its generation ends.
#[derive(Clone)]
pub(crate) struct Exchange {
    pub request_id: String,
    /// The model or alias the request named.
    pub route: String,
    pub endpoint: &'static str,
    /// The prompt as feedback quotes it (a chat's last user message).
    pub prompt: String,
    pub messages: Vec<Message>,
    pub streamed: bool,
    /// How the router chose the model, for a routed request.
    pub routing: Option<Routing>,
    /// For a shadow answer: the live request's id.
    pub shadow_of: Option<String>,
}

pub(crate) fn scrub(text: &str) -> String {
    pii::scrub(text).0
}

/// The response.served of a generation, its text PII-scrubbed.
pub(crate) fn event(
    exchange: &Exchange,
    model_id: Id,
    answered: &Answered,
    latency_ms: f64,
    instance: &str,
) -> ResponseServed {
    let generation = &answered.generation;
    let messages = exchange
        .messages
        .iter()
        .map(|m| ServedMessage {
            role: serde_json::to_value(m.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            content: scrub(&m.content),
        })
        .collect();
    let mut header = response_header(&exchange.request_id, crate::NAME);
    if let Some(live) = &exchange.shadow_of {
        // In the live response's chain: on its partition, after it.
        header.correlation_id = response_event_id(live);
        header.causation_id = Some(header.correlation_id);
    }
    ResponseServed {
        header,
        request_id: exchange.request_id.clone(),
        model_id,
        route: exchange.route.clone(),
        endpoint: exchange.endpoint.to_string(),
        prompt: scrub(&exchange.prompt),
        messages,
        response: scrub(&generation.text),
        finish_reason: answered.finish_reason().to_string(),
        prompt_tokens: generation.prompt_tokens as i64,
        completion_tokens: generation.tokens.len() as i64,
        latency_ms,
        streamed: exchange.streamed,
        instance: instance.to_string(),
        routing: exchange.routing.clone(),
        shadow_of: exchange.shadow_of.clone(),
    }
}

/// Publishes the response.served of a generation and waits for the broker's acknowledgement,
/// so that a client holding the request id can always have its feedback joined. A broker that
/// does not acknowledge does not fail the reply: the loss is logged (feedback for that request
/// will wait, parked by the augmenter).
pub(crate) async fn publish(
    gateway: &Gateway,
    exchange: &Exchange,
    model_id: Id,
    answered: &Answered,
    latency_ms: f64,
) {
    let served = event(
        exchange,
        model_id,
        answered,
        latency_ms,
        &gateway.settings.instance,
    );
    let started = Instant::now();
    match gateway.publisher.publish(&served.into()).await {
        Ok(_) => debug!(
            request = %exchange.request_id,
            publish_ms = started.elapsed().as_secs_f64() * 1e3,
            "response.served acknowledged"
        ),
        Err(error) => warn!(
            request = %exchange.request_id,
            %error,
            "response.served not published: feedback on this response cannot be joined"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_recognised_and_name_one_response_event() {
        let id = new_request_id("chatcmpl");
        assert!(is_request_id(&id), "{id}");
        assert!(is_request_id(&new_request_id("cmpl")));
        for other in [
            "unknown",
            "x",
            "chatcmpl-",
            "chatcmpl-XYZ",
            "req-1",
            &id[..id.len() - 1],
        ] {
            assert!(!is_request_id(other), "{other}");
        }
        assert_eq!(response_event_id(&id), response_event_id(&id));
        assert_ne!(
            response_event_id(&id),
            response_event_id(&new_request_id("chatcmpl"))
        );
        let header = response_header(&id, "gateway");
        assert_eq!(header.correlation_id, header.event_id);
    }
}
