//! The header every event carries: identity, time, origin and causal chain.

use crate::ids::{Id, Timestamp};
use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// The header every Quark event carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
pub struct EventHeader {
    pub event_id: Id,
    pub occurred_at: Timestamp,
    pub producer: String,
    pub correlation_id: Id,
    pub causation_id: Option<Id>,
}

impl EventHeader {
    /// The header of the first event of a chain: it correlates with itself.
    pub fn root(producer: impl Into<String>) -> Self {
        let event_id = Id::random();
        EventHeader {
            event_id,
            occurred_at: Timestamp::now(),
            producer: producer.into(),
            correlation_id: event_id,
            causation_id: None,
        }
    }

    /// The header of an event caused by `cause`: same correlation, causation = `cause`.
    /// `slot` tells apart several events emitted for the same cause; the id is derived from
    /// the cause so that re-handling the cause re-emits the same id.
    pub fn caused_by(cause: &EventHeader, producer: &str, slot: &str) -> Self {
        EventHeader {
            event_id: Id::derived(cause.event_id, &format!("{producer}/{slot}")),
            occurred_at: Timestamp::now(),
            producer: producer.to_string(),
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.event_id),
        }
    }
}
