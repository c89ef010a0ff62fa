//! Quark's event contract and the machinery around it.
//!
//! - [`catalogue`]: the closed set of event types, their topics and schemas (`schemas/*.avsc`).
//! - [`codec`]: Avro binary with single-object or Confluent framing.
//! - [`bus`]: the Kafka bus on rdkafka — topics, the producer and the consumer runner that every
//!   service uses (ack-then-commit, idempotency by event id, retries, dead letters, shutdown).

pub mod bus;
pub mod catalogue;
pub mod codec;
pub mod fingerprint;
pub mod header;
pub mod ids;
pub mod operations;
pub mod payloads;
pub mod progress;
#[cfg(feature = "samples")]
pub mod samples;

pub use catalogue::{Event, EventKind};
pub use codec::{
    CodecError, LocalRegistry, SchemaMiss, SchemaResolver, decode, encode, encode_confluent,
};
pub use header::EventHeader;
pub use ids::{Id, Timestamp};
pub use operations::*;
pub use payloads::*;
pub use progress::*;
