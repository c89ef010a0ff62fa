//! The idempotent producer: every event Quark emits goes through here.
//!
//! One producer per cluster and process, shared by every [`Publisher`] on it: librdkafka's
//! producers are thread-safe, and each one costs a polling thread that wakes ten times a
//! second (about 0.5 % of a core idle), so a one-process stack of a dozen services would
//! otherwise spend a core-percent per service doing nothing.

use super::{BusConfig, BusError, headers, trace};
use crate::catalogue::Event;
use crate::codec::{self, SchemaResolver};
use futures::future::try_join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

#[derive(Clone)]
pub struct Publisher {
    producer: Arc<FutureProducer>,
    /// With a schema registry: Confluent framing under its ids; without: single-object.
    registry: Option<Arc<dyn SchemaResolver>>,
}

impl Publisher {
    /// Publishes through the process's idempotent producer for `config`'s cluster (acks=all,
    /// retries without duplicates or reordering), created on first use as `client_id`.
    pub fn new(config: &BusConfig, client_id: &str) -> Result<Self, BusError> {
        Ok(Publisher {
            producer: shared_producer(config, client_id)?,
            registry: codec::installed_registry(),
        })
    }

    /// Writes Confluent framing with the ids of `registry` (what a standard
    /// `AvroDeserializer` reads), instead of the installed registry or single-object framing.
    pub fn with_registry(mut self, registry: Arc<dyn SchemaResolver>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Encodes `event` (Avro; Confluent framing with a registry, single-object without) and
    /// produces it to its topic, keyed by correlation id so that one learning cycle stays in
    /// order on one partition. Returns once the broker has acknowledged it.
    pub async fn publish(&self, event: &Event) -> Result<Delivery, BusError> {
        let payload = match &self.registry {
            Some(registry) => codec::encode_confluent(event, registry.as_ref())?,
            None => codec::encode(event)?,
        };
        let key = event.header().correlation_id.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: headers::EVENT_TYPE,
            value: Some(event.kind().topic()),
        });
        self.send(
            event.kind().topic(),
            Some(key.as_bytes()),
            &payload,
            trace::inject_current(headers),
        )
        .await
    }

    /// Publishes all events concurrently and waits for every acknowledgement.
    pub async fn publish_all(&self, events: &[Event]) -> Result<(), BusError> {
        try_join_all(events.iter().map(|e| self.publish(e)))
            .await
            .map(drop)
    }

    /// Produces raw bytes (dead letters, benchmarks, foreign producers in tests).
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivery, BusError> {
        let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| BusError::Kafka(error))
    }
}

/// The live producer for `config`'s cluster, or a new one. Held weakly: it closes when the
/// last publisher using it is dropped.
fn shared_producer(config: &BusConfig, client_id: &str) -> Result<Arc<FutureProducer>, BusError> {
    static PRODUCERS: Mutex<Option<HashMap<String, Weak<FutureProducer>>>> = Mutex::new(None);
    let key = format!("{}|{:?}", config.brokers, config.properties);
    let mut producers = PRODUCERS.lock().unwrap_or_else(|e| e.into_inner());
    let producers = producers.get_or_insert_with(HashMap::new);
    if let Some(live) = producers.get(&key).and_then(Weak::upgrade) {
        return Ok(live);
    }
    let producer: FutureProducer = config
        .client_config(client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?;
    let producer = Arc::new(producer);
    producers.retain(|_, weak| weak.strong_count() > 0);
    producers.insert(key, Arc::downgrade(&producer));
    Ok(producer)
}
