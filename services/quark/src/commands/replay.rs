//! `quark replay`: rebuilds the registry from the topics (drop, then fold every event in the
//! order it happened). A projection rebuilt this way equals the one built live.
//!
//! History is never dropped silently: a message that does not decode stops the rebuild,
//! with where it is and why, unless the operator accepts the loss (`--skip-undecodable`),
//! and then every skipped message is counted and named.

use crate::Migrator;
use anyhow::bail;
use quark_events::bus::inspect;
use quark_events::codec::{SchemaResolver, default_resolver};
use quark_events::{Event, EventKind, decode};
use quark_runtime::{Settings, db};
use quark_schema_registry::Store;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message on an event topic that could not be decoded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Undecodable {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub label: &'static str,
    pub error: String,
}

/// The event topics as read by replay.
#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<Event>,
    pub undecodable: Vec<Undecodable>,
}

/// What a replay did.
#[derive(Debug)]
pub struct Replayed {
    pub folded: usize,
    pub skipped: Vec<Undecodable>,
}

/// Skipped messages counted by topic and error label, e.g. `feedback.received: 2 unknown_fingerprint`.
pub fn summarise(undecodable: &[Undecodable]) -> String {
    let mut counts: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for u in undecodable {
        *counts.entry((u.topic.as_str(), u.label)).or_default() += 1;
    }
    counts
        .iter()
        .map(|((topic, label), n)| format!("{topic}: {n} {label}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every message on the event topics, read from the beginning to the current end, decoded
/// with every schema version `registry` knows.
pub fn read_all(settings: &Settings, registry: Arc<dyn SchemaResolver>) -> anyhow::Result<Log> {
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
    let mut log = Log::default();
    if remaining.is_empty() {
        return Ok(log);
    }
    consumer.assign(&assignment)?;
    let runtime = tokio::runtime::Handle::current();
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
        let payload = message.payload().unwrap_or_default();
        let mut decoded = decode(payload, registry.as_ref());
        if let Some(miss) = decoded.as_ref().err().and_then(|e| e.miss())
            && runtime.block_on(registry.refresh(miss))
        {
            decoded = decode(payload, registry.as_ref());
        }
        match decoded {
            Ok(event) => log.events.push(event),
            Err(error) => log.undecodable.push(Undecodable {
                topic: key.0.clone(),
                partition: key.1,
                offset: message.offset(),
                label: error.label(),
                error: error.to_string(),
            }),
        }
        if remaining
            .get(&key)
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&key);
        }
    }
    Ok(log)
}

/// Drops and rebuilds the registry. Refuses when a message does not decode, unless
/// `skip_undecodable`.
pub async fn replay(settings: &Settings, skip_undecodable: bool) -> anyhow::Result<Replayed> {
    super::require_brokers(settings)?;
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    // Every version ever registered, so that history written with older schemas decodes:
    // the embedded registry lives in this database; an external one is installed by `main`.
    let registry: Arc<dyn SchemaResolver> = if settings.schema_registry.url.is_empty() {
        Arc::new(Store::open(database.clone()).await?.resolver())
    } else {
        default_resolver()
    };
    let log = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || read_all(&settings, registry)).await??
    };
    if let Some(first) = log.undecodable.first()
        && !skip_undecodable
    {
        bail!(
            "replay refused: {} message(s) do not decode ({}); the first: {}/{} offset {}: {}. \
             The registry is unchanged; fix the schema registry, or accept the loss with --skip-undecodable",
            log.undecodable.len(),
            summarise(&log.undecodable),
            first.topic,
            first.partition,
            first.offset,
            first.error
        );
    }
    let folded = quark_registry::rebuild(&database, log.events).await?;
    database.close().await.ok();
    Ok(Replayed {
        folded,
        skipped: log.undecodable,
    })
}
