//! `quark watch [topic…]`: follows topics and prints each message as one JSON line — the
//! decoded event, or for dead letters the error and the original bytes.

use anyhow::{Context, bail};
use quark_events::bus::dlq_topic;
use quark_events::{EventKind, SchemaResolver, decode};
use quark_runtime::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Topics to follow: the named ones, or every event topic and dead-letter topic.
pub fn resolve_topics(names: &[String]) -> anyhow::Result<Vec<String>> {
    if names.is_empty() {
        return Ok(EventKind::ALL
            .iter()
            .flat_map(|k| [k.topic().to_string(), dlq_topic(k.topic())])
            .collect());
    }
    for name in names {
        let base = name.strip_suffix(".dlq").unwrap_or(name);
        if EventKind::from_topic(base).is_none() {
            bail!("unknown topic {name:?}");
        }
    }
    Ok(names.to_vec())
}

/// One message as a JSON line.
pub fn render(message: &BorrowedMessage<'_>, registry: &dyn SchemaResolver) -> Value {
    let payload = message.payload().unwrap_or_default();
    let mut line = json!({"topic": message.topic(), "partition": message.partition(), "offset": message.offset()});
    if message.topic().ends_with(".dlq") {
        let mut meta = serde_json::Map::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter().filter(|h| h.key.starts_with("quark-")) {
                meta.insert(
                    h.key.to_string(),
                    Value::String(
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    ),
                );
            }
        }
        line["dead_letter"] = Value::Object(meta);
        line["payload_hex"] = Value::String(payload.iter().map(|b| format!("{b:02x}")).collect());
    } else {
        match decode(payload, registry) {
            Ok(event) => line["event"] = event.to_json(),
            Err(e) => line["error"] = Value::String(e.to_string()),
        }
    }
    line
}

/// Prints messages of `topics` to stdout until `shutdown` (or `limit` messages).
pub async fn watch(
    settings: &Settings,
    topics: &[String],
    from_beginning: bool,
    limit: Option<usize>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    super::require_brokers(settings)?;
    // Assigned partitions rather than a consumer group: watching commits nothing.
    let consumer: StreamConsumer = settings
        .bus
        .consumer_config("quark-watch", "quark-watch")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("cannot reach the brokers")?;
    let mut assignment = TopicPartitionList::new();
    let start = if from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for partition in topic.partitions() {
            assignment.add_partition_offset(topic.name(), partition.id(), start)?;
        }
    }
    if assignment.count() == 0 {
        bail!("none of the topics exist yet; `quark up` creates them");
    }
    consumer.assign(&assignment)?;
    let registry = quark_events::codec::default_resolver();
    let mut printed = 0;
    while limit.is_none_or(|l| printed < l) {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m?,
        };
        println!("{}", render(&message, registry.as_ref()));
        printed += 1;
    }
    Ok(())
}
