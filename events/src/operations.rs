//! Payloads of what operators do by hand: each is an event, so the log says who did what,
//! when and why (field docs live in the `.avsc` files).

use crate::header::EventHeader;
use crate::ids::Id;
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

/// What an operator asks of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum PromotionAction {
    Promote,
    Rollback,
}

/// An alias moved by hand: the registry answers with model.promoted (operator and note
/// carried), or dead-letters a request it cannot carry out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct PromotionRequested {
    pub header: EventHeader,
    pub action: PromotionAction,
    #[avro(default = "null")]
    #[serde(default)]
    pub model_id: Option<Id>,
    #[avro(default = "null")]
    #[serde(default)]
    pub alias_name: Option<String>,
    pub operator: String,
    #[avro(default = "null")]
    #[serde(default)]
    pub reason: Option<String>,
}
