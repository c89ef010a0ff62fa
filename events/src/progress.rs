//! Payloads of work in progress: what a long job reports while it runs, so operators see it
//! move (field docs live in the `.avsc` files).

use crate::header::EventHeader;
use crate::ids::Id;
use crate::payloads::RunKind;
use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// A training job's progress: its step, loss and speed, at most once a second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct TrainingProgressed {
    pub header: EventHeader,
    pub job_id: Id,
    pub run_kind: RunKind,
    pub step: i64,
    pub max_steps: i64,
    #[avro(default = "null")]
    #[serde(default)]
    pub loss: Option<f64>,
    #[avro(default = "null")]
    #[serde(default)]
    pub val_loss: Option<f64>,
    #[avro(default = "null")]
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
    pub device: String,
}
