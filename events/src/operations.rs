//! Payloads of what operators do by hand: each is an event, so the log says who did what,
//! when and why (field docs live in the `.avsc` files).

use crate::header::EventHeader;
use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// A dead letter sent back to its source topic after the cause was fixed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct DeadLetterRedriven {
    pub header: EventHeader,
    pub dead_letter_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub source_topic: String,
    pub redelivered_partition: i32,
    pub redelivered_offset: i64,
    pub error_label: String,
    pub consumer: String,
    pub operator: String,
    #[avro(default = "null")]
    #[serde(default)]
    pub reason: Option<String>,
}
