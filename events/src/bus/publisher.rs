//! The idempotent producer: every event Quark emits goes through here.

use super::{BusConfig, BusError, headers, trace};
use crate::catalogue::Event;
use crate::codec;
use futures::future::try_join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
}

impl Publisher {
    /// An idempotent producer (acks=all, retries without duplicates or reordering).
    pub fn new(config: &BusConfig, client_id: &str) -> Result<Self, BusError> {
        let producer = config
            .client_config(client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Publisher { producer })
    }

    /// Encodes `event` (single-object Avro) and produces it to its topic, keyed by correlation
    /// id so that one learning cycle stays in order on one partition. Returns once the broker
    /// has acknowledged it.
    pub async fn publish(&self, event: &Event) -> Result<Delivery, BusError> {
        let payload = codec::encode(event)?;
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
