//! Avro binary on the wire, in either standard framing:
//! - single-object encoding: `C3 01` + 8-byte CRC-64-AVRO fingerprint + datum (no registry);
//! - Confluent framing: `00` + 4-byte big-endian schema id + datum (what producers with a
//!   schema registry send), the id resolved through a [`SchemaResolver`].
//!
//! Decoding reads with the writer's schema and resolves into the current one, so data written
//! with an older (compatible) version of a schema still decodes: the current schemas are known
//! here, every other version through the resolver (a cache of the schema registry).

use crate::catalogue::{Event, EventKind, entry};
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use futures::future::BoxFuture;
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

    /// The writer schema a registry could still supply, when that is why decoding failed.
    pub fn miss(&self) -> Option<SchemaMiss> {
        match self {
            CodecError::UnknownSchemaId(id) => Some(SchemaMiss::Id(*id)),
            CodecError::UnknownFingerprint(hex) => {
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                    .collect::<Option<_>>()?;
                bytes.try_into().ok().map(SchemaMiss::Fingerprint)
            }
            _ => None,
        }
    }
}

/// A writer schema a resolver did not know: what [`SchemaResolver::refresh`] is asked to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaMiss {
    /// A Confluent-framed message's registry id.
    Id(u32),
    /// A single-object message's CRC-64-AVRO fingerprint.
    Fingerprint([u8; 8]),
}

/// Maps schema-registry ids and single-object fingerprints to writer schemas, and event types to
/// the id of their current schema. Lookups are synchronous (a cache); a resolver backed by a
/// registry fills its cache on a miss in [`SchemaResolver::refresh`], and the consumer runner
/// retries the decode once it returns true. [`LocalRegistry`] is the cache itself.
pub trait SchemaResolver: Send + Sync {
    /// The writer schema registered under `id`.
    fn schema(&self, id: u32) -> Option<Arc<Schema>>;
    /// The registered writer schema with this single-object fingerprint.
    fn schema_by_fingerprint(&self, fingerprint: &[u8; 8]) -> Option<Arc<Schema>>;
    /// The id under which the current schema of `kind` is registered.
    fn id_of(&self, kind: EventKind) -> Option<u32>;
    /// Looks the missing schema up at the source; true when the cache has learnt something.
    fn refresh(&self, miss: SchemaMiss) -> BoxFuture<'_, bool> {
        let _ = miss;
        Box::pin(std::future::ready(false))
    }
}

/// The process-wide registry client, installed once by the binary when a schema registry is
/// configured: every [`crate::bus::Publisher`] then writes Confluent framing with its ids, and
/// every [`crate::bus::Runner`] resolves writer schemas through it.
static INSTALLED: RwLock<Option<Arc<dyn SchemaResolver>>> = RwLock::new(None);

/// Installs `resolver` as the process-wide registry client (replacing any earlier one).
pub fn install_registry(resolver: Arc<dyn SchemaResolver>) {
    *INSTALLED.write().expect("registry lock") = Some(resolver);
}

/// The process-wide registry client, if one was installed.
pub fn installed_registry() -> Option<Arc<dyn SchemaResolver>> {
    INSTALLED.read().expect("registry lock").clone()
}

/// The installed registry client, or else a [`LocalRegistry`] of the current schemas.
pub fn default_resolver() -> Arc<dyn SchemaResolver> {
    installed_registry().unwrap_or_else(|| Arc::new(LocalRegistry::default()))
}

/// An in-process registry and cache: ids and fingerprints of writer schemas. `default()` holds
/// every current event schema (ids 1..=n in catalogue order); `empty()` none, for a cache that a
/// registry client fills.
pub struct LocalRegistry {
    inner: RwLock<Registered>,
}

#[derive(Default)]
struct Registered {
    by_id: HashMap<u32, (Arc<Schema>, [u8; 8])>,
    by_fingerprint: HashMap<[u8; 8], u32>,
}

impl Default for LocalRegistry {
    fn default() -> Self {
        let registry = LocalRegistry::empty();
        for kind in EventKind::ALL {
            registry.register(*kind as u32 + 1, kind.schema().clone());
        }
        registry
    }
}

impl LocalRegistry {
    pub fn empty() -> Self {
        LocalRegistry {
            inner: RwLock::new(Registered::default()),
        }
    }

    /// Registers a writer schema under `id` (replacing any schema there).
    pub fn register(&self, id: u32, schema: Schema) {
        let fingerprint = crate::fingerprint::fingerprint(&schema);
        let mut inner = self.inner.write().expect("registry lock");
        if let Some((_, old)) = inner.by_id.insert(id, (Arc::new(schema), fingerprint)) {
            inner.by_fingerprint.remove(&old);
        }
        inner.by_fingerprint.insert(fingerprint, id);
    }

    /// Whether a schema is registered under `id`.
    pub fn contains(&self, id: u32) -> bool {
        self.inner
            .read()
            .expect("registry lock")
            .by_id
            .contains_key(&id)
    }
}

impl SchemaResolver for LocalRegistry {
    fn schema(&self, id: u32) -> Option<Arc<Schema>> {
        let inner = self.inner.read().expect("registry lock");
        inner.by_id.get(&id).map(|(schema, _)| schema.clone())
    }
    fn schema_by_fingerprint(&self, fingerprint: &[u8; 8]) -> Option<Arc<Schema>> {
        let inner = self.inner.read().expect("registry lock");
        let id = inner.by_fingerprint.get(fingerprint)?;
        inner.by_id.get(id).map(|(schema, _)| schema.clone())
    }
    fn id_of(&self, kind: EventKind) -> Option<u32> {
        let inner = self.inner.read().expect("registry lock");
        inner.by_fingerprint.get(&kind.fingerprint()).copied()
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

/// The most one string, byte array or collection of a datum may allocate: more than any
/// message the bus carries (librdkafka's `message.max.bytes` is 1 MB), where apache-avro's own
/// default (512 MiB) let a corrupted length in a 200-byte message ask for half a gigabyte.
pub const MAX_DATUM_ALLOCATION: usize = 16 << 20;

/// Decodes a message in either framing. A single-object fingerprint that is not a current
/// schema's, and every Confluent id, are looked up in `resolver`; the writer schema found is
/// resolved into the current one.
pub fn decode(bytes: &[u8], resolver: &dyn SchemaResolver) -> Result<Event, CodecError> {
    apache_avro::util::max_allocation_bytes(MAX_DATUM_ALLOCATION);
    match bytes {
        [] => Err(CodecError::Empty),
        [0xC3, 0x01, rest @ ..] => {
            let fingerprint: [u8; 8] = rest
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or(CodecError::Truncated("single-object header"))?;
            if let Some(kind) = EventKind::from_fingerprint(&fingerprint) {
                return read_datum(kind, kind.schema(), &rest[8..]);
            }
            let writer = resolver
                .schema_by_fingerprint(&fingerprint)
                .ok_or_else(|| CodecError::UnknownFingerprint(hex(&fingerprint)))?;
            read_with_writer(&writer, &rest[8..])
        }
        [CONFLUENT_MAGIC, rest @ ..] => {
            let id: [u8; 4] = rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(CodecError::Truncated("Confluent header"))?;
            let id = u32::from_be_bytes(id);
            let writer = resolver.schema(id).ok_or(CodecError::UnknownSchemaId(id))?;
            read_with_writer(&writer, &rest[4..])
        }
        // Only a lone C3 is a cut-off magic; C3 followed by anything but 01 is another framing.
        [first] if *first == SINGLE_OBJECT_MAGIC[0] => {
            Err(CodecError::Truncated("single-object magic"))
        }
        [first, ..] => Err(CodecError::UnknownFraming(*first)),
    }
}

/// Reads a datum written with `writer`, a registered schema of some Quark event type.
fn read_with_writer(writer: &Schema, datum: &[u8]) -> Result<Event, CodecError> {
    let name = writer.name().map(|n| n.fullname(None)).unwrap_or_default();
    let kind = EventKind::from_schema_name(&name).ok_or(CodecError::UnknownSchemaName(name))?;
    read_datum(kind, writer, datum)
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
