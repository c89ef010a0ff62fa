//! Avro binary on the wire, in either standard framing:
//! - single-object encoding: `C3 01` + 8-byte CRC-64-AVRO fingerprint + datum (no registry);
//! - Confluent framing: `00` + 4-byte big-endian schema id + datum (what producers with a
//!   schema registry send), the id resolved through a [`SchemaResolver`].
//!
//! Decoding reads with the writer's schema and resolves into the current one, so data written
//! with an older (compatible) version of a schema still decodes.

use crate::catalogue::{Event, EventKind, entry};
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
const CONFLUENT_MAGIC: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty message")]
    Empty,
    #[error(
        "unknown framing: first byte {0:#04x} is neither single-object (C3 01) nor Confluent (00)"
    )]
    UnknownFraming(u8),
    #[error("message is truncated: {0}")]
    Truncated(&'static str),
    #[error("unknown schema fingerprint {0}")]
    UnknownFingerprint(String),
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    #[error("schema {0} is not a Quark event")]
    UnknownSchemaName(String),
    #[error("no schema id registered for {0}")]
    NotRegistered(EventKind),
    #[error("invalid Avro data for {kind}: {source}")]
    Avro {
        kind: EventKind,
        #[source]
        source: apache_avro::Error,
    },
    #[error("{0} trailing bytes after the Avro datum")]
    TrailingBytes(usize),
}

impl CodecError {
    /// A short stable label, for metrics and dead-letter headers.
    pub fn label(&self) -> &'static str {
        match self {
            CodecError::Empty => "empty",
            CodecError::UnknownFraming(_) => "unknown_framing",
            CodecError::Truncated(_) => "truncated",
            CodecError::UnknownFingerprint(_) => "unknown_fingerprint",
            CodecError::UnknownSchemaId(_) => "unknown_schema_id",
            CodecError::UnknownSchemaName(_) => "unknown_schema_name",
            CodecError::NotRegistered(_) => "not_registered",
            CodecError::Avro { .. } => "invalid_avro",
            CodecError::TrailingBytes(_) => "trailing_bytes",
        }
    }
}

/// Maps Confluent schema-registry ids to writer schemas and back. A client of a real
/// Confluent registry implements it; [`LocalRegistry`] serves one process.
pub trait SchemaResolver: Send + Sync {
    /// The writer schema registered under `id`.
    fn schema(&self, id: u32) -> Option<Arc<Schema>>;
    /// The id under which the current schema of `kind` is registered.
    fn id_of(&self, kind: EventKind) -> Option<u32>;
}

/// An in-process registry: every current event schema registered at start (ids 1..=n in
/// catalogue order) plus any writer schemas registered later, e.g. older versions.
pub struct LocalRegistry {
    by_id: RwLock<HashMap<u32, Registered>>,
}

/// A schema with its fingerprint, so lookups by event type compare 8 bytes.
type Registered = (Arc<Schema>, [u8; 8]);

impl Default for LocalRegistry {
    fn default() -> Self {
        let by_id = EventKind::ALL
            .iter()
            .map(|k| {
                (
                    *k as u32 + 1,
                    (Arc::new(k.schema().clone()), k.fingerprint()),
                )
            })
            .collect();
        LocalRegistry {
            by_id: RwLock::new(by_id),
        }
    }
}

impl LocalRegistry {
    /// Registers a writer schema under `id` (replacing any schema there).
    pub fn register(&self, id: u32, schema: Schema) {
        let fingerprint = crate::fingerprint::fingerprint(&schema);
        self.by_id
            .write()
            .expect("registry lock")
            .insert(id, (Arc::new(schema), fingerprint));
    }
}

impl SchemaResolver for LocalRegistry {
    fn schema(&self, id: u32) -> Option<Arc<Schema>> {
        let by_id = self.by_id.read().expect("registry lock");
        by_id.get(&id).map(|(schema, _)| schema.clone())
    }
    fn id_of(&self, kind: EventKind) -> Option<u32> {
        let current = kind.fingerprint();
        let by_id = self.by_id.read().expect("registry lock");
        by_id
            .iter()
            .find(|(_, (_, f))| *f == current)
            .map(|(id, _)| *id)
    }
}

/// Encodes with single-object framing.
pub fn encode(event: &Event) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&entry(event.kind()).single_object_header);
    write_datum(event, &mut out)?;
    Ok(out)
}

/// Encodes with Confluent framing, under the id `resolver` gives the event's schema.
pub fn encode_confluent(
    event: &Event,
    resolver: &dyn SchemaResolver,
) -> Result<Vec<u8>, CodecError> {
    let id = resolver
        .id_of(event.kind())
        .ok_or(CodecError::NotRegistered(event.kind()))?;
    let mut out = Vec::with_capacity(256);
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    write_datum(event, &mut out)?;
    Ok(out)
}

fn write_datum(event: &Event, out: &mut Vec<u8>) -> Result<(), CodecError> {
    event
        .write_avro(out)
        .map(drop)
        .map_err(|source| CodecError::Avro {
            kind: event.kind(),
            source,
        })
}

/// Decodes a message in either framing. `resolver` is consulted for Confluent-framed
/// messages only.
pub fn decode(bytes: &[u8], resolver: &dyn SchemaResolver) -> Result<Event, CodecError> {
    match bytes {
        [] => Err(CodecError::Empty),
        [0xC3, 0x01, rest @ ..] => {
            let fingerprint = rest
                .get(..8)
                .ok_or(CodecError::Truncated("single-object header"))?;
            let kind = EventKind::from_fingerprint(fingerprint)
                .ok_or_else(|| CodecError::UnknownFingerprint(hex(fingerprint)))?;
            read_datum(kind, kind.schema(), &rest[8..])
        }
        [CONFLUENT_MAGIC, rest @ ..] => {
            let id: [u8; 4] = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(CodecError::Truncated("Confluent header"))?;
            let id = u32::from_be_bytes(id);
            let writer = resolver.schema(id).ok_or(CodecError::UnknownSchemaId(id))?;
            let name = writer.name().map(|n| n.fullname(None)).unwrap_or_default();
            let kind =
                EventKind::from_schema_name(&name).ok_or(CodecError::UnknownSchemaName(name))?;
            read_datum(kind, &writer, &rest[4..])
        }
        // Only a lone C3 is a cut-off magic; C3 followed by anything but 01 is another framing.
        [first] if *first == SINGLE_OBJECT_MAGIC[0] => {
            Err(CodecError::Truncated("single-object magic"))
        }
        [first, ..] => Err(CodecError::UnknownFraming(*first)),
    }
}

fn read_datum(kind: EventKind, writer: &Schema, mut datum: &[u8]) -> Result<Event, CodecError> {
    let avro = |source| CodecError::Avro { kind, source };
    let reader = kind.schema();
    let value = if std::ptr::eq(writer, reader) {
        GenericDatumReader::builder(writer)
            .build()
            .map_err(avro)?
            .read_value(&mut datum)
    } else {
        GenericDatumReader::builder(writer)
            .reader_schema(reader)
            .build()
            .map_err(avro)?
            .read_value(&mut datum)
    }
    .map_err(avro)?;
    if !datum.is_empty() {
        return Err(CodecError::TrailingBytes(datum.len()));
    }
    Event::from_avro(kind, &value).map_err(avro)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
