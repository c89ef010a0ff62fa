//! The Kafka bus on rdkafka. Nothing here is specific to the embedded broker: the same code
//! runs against Tansu or any Kafka cluster.

mod config;
mod keepalive;
mod ledger;
mod publisher;
mod redrive;
mod runner;
mod topics;
mod trace;

pub use config::{BusConfig, is_secret, shown};
pub use ledger::{ConsumerPositions, LedgerMigration, ProcessedEvents, positions};
pub use publisher::Publisher;
pub use redrive::{DeadLetter, Redrive, dead_letters, redrive};
pub use runner::{Handler, HandlerError, RetryPolicy, Runner};
pub use topics::{
    PartitionState, TopicState, dlq_topic, ensure_topics, inspect, inspect_with, quark_topics,
    read_topic,
};

/// Kafka header names Quark sets on every message.
pub mod headers {
    /// The event type (its topic name), so a reader can tell without decoding.
    pub const EVENT_TYPE: &str = "quark-event-type";
    /// Dead letters: why the message failed, as a short label and as text.
    pub const ERROR_LABEL: &str = "quark-error-label";
    pub const ERROR: &str = "quark-error";
    /// Dead letters: where the message came from and who gave up on it.
    pub const SOURCE_TOPIC: &str = "quark-source-topic";
    pub const SOURCE_PARTITION: &str = "quark-source-partition";
    pub const SOURCE_OFFSET: &str = "quark-source-offset";
    pub const CONSUMER: &str = "quark-consumer";
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("the broker gave no offset for {topic}/{partition} ({found})")]
    NoOffset {
        topic: String,
        partition: i32,
        found: String,
    },
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

impl BusError {
    /// A short stable label, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BusError::Kafka(_) => "kafka",
            BusError::CreateTopic { .. } => "create_topic",
            BusError::NoOffset { .. } => "no_offset",
            BusError::Codec(e) => e.label(),
            BusError::Db(_) => "database",
        }
    }
}
