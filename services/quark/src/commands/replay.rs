//! `quark replay`: rebuilds the registry from the topics (drop, then fold every event in the
//! order it happened). A projection rebuilt this way equals the one built live.

use crate::Migrator;
use anyhow::bail;
use quark_events::bus::inspect;
use quark_events::{Event, EventKind, LocalRegistry, decode};
use quark_runtime::{Settings, db};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every event on the event topics, read from the beginning to the current end.
pub fn read_all(settings: &Settings) -> anyhow::Result<Vec<Event>> {
    let consumer: BaseConsumer = settings
        .bus
        .consumer_config("quark-replay", "quark-replay")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
    for topic in inspect(&settings.bus)? {
        if EventKind::from_topic(&topic.topic).is_none() {
            continue;
        }
        for p in &topic.partitions {
            if p.high > p.low {
                assignment.add_partition_offset(
                    &topic.topic,
                    p.partition,
                    Offset::Offset(p.low),
                )?;
                remaining.insert((topic.topic.clone(), p.partition), p.high);
            }
        }
    }
    let mut events = Vec::new();
    if remaining.is_empty() {
        return Ok(events);
    }
    consumer.assign(&assignment)?;
    let registry = LocalRegistry::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "replay stalled: {} partition(s) not read to their end",
                remaining.len()
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let key = (message.topic().to_string(), message.partition());
        if let Ok(event) = decode(message.payload().unwrap_or_default(), &registry) {
            events.push(event);
        }
        if remaining
            .get(&key)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&key);
        }
    }
    Ok(events)
}

/// Drops and rebuilds the registry; returns the number of events folded.
pub async fn replay(settings: &Settings) -> anyhow::Result<usize> {
    if settings.uses_embedded_broker() {
        bail!(
            "bus.brokers is empty: set QUARK__BUS__BROKERS (quark up listens on {})",
            settings.broker.listen
        );
    }
    let events = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || read_all(&settings)).await??
    };
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    let folded = quark_registry::rebuild(&database, events, &settings.registry).await?;
    database.close().await.ok();
    Ok(folded)
}
