//! The closed set of event types: each one's topic, schema (from `schemas/`), Rust type and
//! single-object fingerprint. One table below declares them all.

use crate::header::EventHeader;
use crate::operations::*;
use crate::payloads::*;
use crate::progress::*;
use apache_avro::{AvroSchema, Schema};
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

macro_rules! catalogue {
    ($( $variant:ident => $topic:literal ),* $(,)?) => {
        /// Every event type Quark knows; one topic each.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum EventKind { $($variant),* }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The Kafka topic that carries this event type.
            pub fn topic(self) -> &'static str {
                match self { $(EventKind::$variant => $topic),* }
            }

            /// The `.avsc` text, embedded at build time from `schemas/`.
            pub fn schema_text(self) -> &'static str {
                match self { $(EventKind::$variant => include_str!(concat!("../../schemas/", $topic, ".avsc"))),* }
            }

            /// The schema the Rust type derives; the drift test compares it with the file.
            pub fn derived_schema(self) -> Schema {
                match self { $(EventKind::$variant => <$variant as AvroSchema>::get_schema()),* }
            }
        }

        /// An event of any type.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Event { $($variant($variant)),* }

        impl Event {
            pub fn kind(&self) -> EventKind {
                match self { $(Event::$variant(_) => EventKind::$variant),* }
            }

            pub fn header(&self) -> &EventHeader {
                match self { $(Event::$variant(e) => &e.header),* }
            }

            /// The payload as JSON (what `quark watch` prints and `quark publish` reads).
            pub fn to_json(&self) -> serde_json::Value {
                let json = match self { $(Event::$variant(e) => serde_json::to_value(e)),* };
                json.expect("events are plain data and always serialise to JSON")
            }

            pub fn from_json(kind: EventKind, json: serde_json::Value) -> Result<Event, serde_json::Error> {
                Ok(match kind { $(EventKind::$variant => Event::$variant(serde_json::from_value(json)?)),* })
            }

            pub(crate) fn write_avro(&self, out: &mut Vec<u8>) -> Result<usize, apache_avro::Error> {
                let writer = &entry(self.kind()).writer;
                match self { $(Event::$variant(e) => writer.write_ser(out, e)),* }
            }

            pub(crate) fn from_avro(kind: EventKind, value: &apache_avro::types::Value) -> Result<Event, apache_avro::Error> {
                Ok(match kind { $(EventKind::$variant => Event::$variant(apache_avro::from_value(value)?)),* })
            }
        }

        $(impl From<$variant> for Event {
            fn from(e: $variant) -> Event { Event::$variant(e) }
        })*
    };
}

catalogue! {
    DataCollected => "data.collected",
    DatasetPrepared => "dataset.prepared",
    TokenizerTrained => "tokenizer.trained",
    ModelTrained => "model.trained",
    EvalCompleted => "eval.completed",
    EvalRegressed => "eval.regressed",
    ModelPromoted => "model.promoted",
    FeedbackReceived => "feedback.received",
    TelemetryReported => "telemetry.reported",
    RetrainRequested => "retrain.requested",
    IndexUpdated => "index.updated",
    ResponseServed => "response.served",
    ForgetRequested => "forget.requested",
    DocumentForgotten => "document.forgotten",
    DeadLetterRedriven => "dlq.redriven",
    PromotionRequested => "promotion.requested",
    TrainingProgressed => "training.progressed",
}

/// What the codec needs of one event type, parsed once.
pub(crate) struct Entry {
    pub schema: &'static Schema,
    /// `C3 01` + the CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form.
    pub single_object_header: [u8; 10],
    pub writer: apache_avro::writer::datum::GenericDatumWriter<'static>,
}

static ENTRIES: LazyLock<Vec<Entry>> = LazyLock::new(|| {
    EventKind::ALL
        .iter()
        .map(|kind| {
            let schema: &'static Schema = Box::leak(Box::new(
                Schema::parse_str(kind.schema_text())
                    .unwrap_or_else(|e| panic!("schemas/{}.avsc is invalid: {e}", kind.topic())),
            ));
            let mut header = [0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
            header[2..].copy_from_slice(&crate::fingerprint::fingerprint(schema));
            let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                .build()
                .expect("a parsed schema resolves");
            Entry {
                schema,
                single_object_header: header,
                writer,
            }
        })
        .collect()
});

pub(crate) fn entry(kind: EventKind) -> &'static Entry {
    &ENTRIES[kind as usize]
}

impl EventKind {
    /// The parsed schema of `schemas/<topic>.avsc`.
    pub fn schema(self) -> &'static Schema {
        entry(self).schema
    }

    /// The 8-byte CRC-64-AVRO fingerprint used by single-object encoding.
    pub fn fingerprint(self) -> [u8; 8] {
        entry(self).single_object_header[2..]
            .try_into()
            .expect("8 bytes")
    }

    pub fn from_topic(topic: &str) -> Option<EventKind> {
        EventKind::ALL.iter().copied().find(|k| k.topic() == topic)
    }

    pub fn from_fingerprint(fingerprint: &[u8]) -> Option<EventKind> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.fingerprint() == fingerprint)
    }

    /// The event type whose record has this full name (e.g. `quark.events.FeedbackReceived`).
    pub fn from_schema_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.schema().name().map(|n| n.fullname(None)) == Some(name.to_string()))
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.topic())
    }
}
