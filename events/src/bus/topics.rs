//! Topics: created at start-up through the admin API (brokers such as Tansu do not create
//! them on first use), and inspected for `quark topics`.

use super::{BusConfig, BusError};
use crate::catalogue::EventKind;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading a whole topic may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Every topic Quark uses: each event type's and its dead-letter topic.
pub fn quark_topics() -> Vec<String> {
    EventKind::ALL
        .iter()
        .flat_map(|k| [k.topic().to_string(), dlq_topic(k.topic())])
        .collect()
}

/// Creates every missing topic; existing ones are left as they are (and not asked for
/// again: Tansu logs an error for each topic it is asked to create that exists).
pub async fn ensure_topics(config: &BusConfig) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = config.client_config("quark-admin").create()?;
    let existing: Vec<String> = {
        let metadata = admin.inner().fetch_metadata(None, TIMEOUT)?;
        metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .collect()
    };
    let names: Vec<String> = quark_topics()
        .into_iter()
        .filter(|name| !existing.contains(name))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionState {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicState {
    pub topic: String,
    pub partitions: Vec<PartitionState>,
}

impl TopicState {
    pub fn messages(&self) -> i64 {
        self.partitions.iter().map(|p| p.high - p.low).sum()
    }

    /// The lag of every consumer that has recorded a position on this topic, from all the
    /// runners' positions (consumer, topic, partition, next offset) as `positions` reads them.
    pub fn lags(&self, positions: &[(String, String, i32, i64)]) -> BTreeMap<String, i64> {
        let mut lags = BTreeMap::new();
        for (consumer, ..) in positions.iter().filter(|p| p.1 == self.topic) {
            if lags.contains_key(consumer) {
                continue;
            }
            let own: Vec<(i32, i64)> = positions
                .iter()
                .filter(|p| &p.0 == consumer && p.1 == self.topic)
                .map(|p| (p.2, p.3))
                .collect();
            lags.insert(consumer.clone(), self.lag(&own));
        }
        lags
    }

    /// Messages after `positions` (the next offset to process, per partition).
    pub fn lag(&self, positions: &[(i32, i64)]) -> i64 {
        self.partitions
            .iter()
            .map(|p| {
                let next = positions
                    .iter()
                    .find(|(partition, _)| *partition == p.partition)
                    .map_or(p.low, |(_, o)| *o);
                (p.high - next.max(p.low)).max(0)
            })
            .sum()
    }
}

/// Watermarks of every Quark topic that exists.
///
/// Consumer progress comes from the runner's own record (`consumer_positions`), not from the
/// group coordinator: reading a live group's committed offsets from a second client breaks
/// that group's rebalancing on Tansu 0.6.
pub fn inspect(config: &BusConfig) -> Result<Vec<TopicState>, BusError> {
    let client: BaseConsumer = config.client_config("quark-inspect").create()?;
    inspect_with(&client)
}

/// [`inspect`] through a client kept by the caller (one who asks every second): the first and
/// the next offsets of every partition, each in one request per broker.
pub fn inspect_with(client: &BaseConsumer) -> Result<Vec<TopicState>, BusError> {
    let metadata = client.fetch_metadata(None, TIMEOUT)?;
    let (mut first, mut next) = (TopicPartitionList::new(), TopicPartitionList::new());
    let mut names = Vec::new();
    for name in quark_topics() {
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
            continue;
        };
        for p in topic.partitions() {
            // As ListOffsets reads them: -2 is the earliest offset, -1 the latest.
            first.add_partition_offset(&name, p.id(), Offset::Beginning)?;
            next.add_partition_offset(&name, p.id(), Offset::End)?;
        }
        names.push(name);
    }
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let (first, next) = (
        client.offsets_for_times(first, TIMEOUT)?,
        client.offsets_for_times(next, TIMEOUT)?,
    );
    names
        .into_iter()
        .map(|name| {
            let mut partitions = next
                .elements_for_topic(&name)
                .iter()
                .map(|e| {
                    Ok(PartitionState {
                        partition: e.partition(),
                        low: offset_of(&first, &name, e.partition())?,
                        high: offset_of(&next, &name, e.partition())?,
                    })
                })
                .collect::<Result<Vec<PartitionState>, BusError>>()?;
            partitions.sort_by_key(|p| p.partition);
            Ok(TopicState {
                topic: name,
                partitions,
            })
        })
        .collect()
}

/// The offset the broker gave for one partition; an error rather than a guess when it gave
/// none (a partition taken for empty would drop its messages from a replay).
fn offset_of(list: &TopicPartitionList, topic: &str, partition: i32) -> Result<i64, BusError> {
    let missing = |found: String| BusError::NoOffset {
        topic: topic.to_string(),
        partition,
        found,
    };
    let element = list
        .find_partition(topic, partition)
        .ok_or_else(|| missing("no answer".into()))?;
    element.error()?;
    match element.offset() {
        Offset::Offset(offset) => Ok(offset),
        other => Err(missing(format!("{other:?}"))),
    }
}

/// Every message of `topic`, read from its first offset to the end it had when asked
/// (assigned partitions: no consumer group is joined or committed).
pub fn read_topic(config: &BusConfig, topic: &str) -> Result<Vec<OwnedMessage>, BusError> {
    let consumer: BaseConsumer = config
        .client_config("quark-reader")
        .set("group.id", "quark-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), READ_TIMEOUT)?;
    let mut ends = HashMap::new();
    let mut list = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), READ_TIMEOUT)?;
        if high > low {
            ends.insert(p.id(), high);
            list.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
        }
    }
    let mut messages = Vec::new();
    if ends.is_empty() {
        return Ok(messages);
    }
    consumer.assign(&list)?;
    let started = Instant::now();
    while !ends.is_empty() {
        if started.elapsed() > READ_TIMEOUT {
            return Err(BusError::Kafka(
                rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                ),
            ));
        }
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = received?.detach();
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
        messages.push(message);
    }
    Ok(messages)
}
