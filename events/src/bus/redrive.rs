//! Dead letters read back and sent again (`quark dlq list`, `quark dlq redrive`).
//!
//! A letter is the original message (bytes, key, headers) with headers saying where it came
//! from, which consumer gave up on it and why. Redriving one produces the message again to its
//! source topic, then publishes dlq.redriven naming the letter: a letter named there is not
//! sent again, and the log says who sent it and why. Letters of one source message (each
//! consumer that gave up on it wrote one) share one redelivery, which every consumer group
//! reads; a group that had processed it skips it by its event id. A crash between the two
//! sends leaves the letter unnamed, so the next redrive sends it once more, and consumers drop
//! that copy by its event id too.

use super::{BusConfig, BusError, Publisher, dlq_topic, headers, read_topic};
use crate::catalogue::{Event, EventKind};
use crate::codec::{self, SchemaResolver};
use crate::header::EventHeader;
use crate::operations::DeadLetterRedriven;
use futures::{StreamExt, TryStreamExt};
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use std::collections::{HashMap, HashSet};

/// Redeliveries in flight at once.
const IN_FLIGHT: usize = 64;

/// The headers a letter carries besides the message's own.
const LETTER_HEADERS: [&str; 6] = [
    headers::ERROR_LABEL,
    headers::ERROR,
    headers::SOURCE_TOPIC,
    headers::SOURCE_PARTITION,
    headers::SOURCE_OFFSET,
    headers::CONSUMER,
];

/// A message on a dead-letter topic.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    /// `<dead-letter topic>:<partition>:<offset>`, how the command line names it.
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered (ms since the epoch), as the broker says.
    pub timestamp_ms: Option<i64>,
    pub source_topic: String,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub consumer: String,
    pub error_label: String,
    pub error: String,
    /// Where it was sent again, when it was.
    pub redelivered: Option<(i32, i64)>,
    #[serde(skip)]
    message: OwnedMessage,
}

impl DeadLetter {
    /// Reads a message of a dead-letter topic.
    pub fn from_message(message: OwnedMessage) -> DeadLetter {
        let header = |key: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == key))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let source = topic.strip_suffix(".dlq").unwrap_or(topic).to_string();
        DeadLetter {
            id: format!("{topic}:{partition}:{offset}"),
            topic: topic.to_string(),
            partition,
            offset,
            timestamp_ms: message.timestamp().to_millis(),
            source_topic: header(headers::SOURCE_TOPIC).unwrap_or(source),
            source_partition: header(headers::SOURCE_PARTITION).and_then(|v| v.parse().ok()),
            source_offset: header(headers::SOURCE_OFFSET).and_then(|v| v.parse().ok()),
            consumer: header(headers::CONSUMER).unwrap_or_default(),
            error_label: header(headers::ERROR_LABEL).unwrap_or_default(),
            error: header(headers::ERROR).unwrap_or_default(),
            redelivered: None,
            message,
        }
    }

    /// The source message it stands for: letters of one message share it.
    fn source(&self) -> (String, Option<i32>, Option<i64>, String) {
        match (self.source_partition, self.source_offset) {
            (Some(_), Some(_)) => (
                self.source_topic.clone(),
                self.source_partition,
                self.source_offset,
                String::new(),
            ),
            // Without coordinates, only the letter itself.
            _ => (self.source_topic.clone(), None, None, self.id.clone()),
        }
    }

    /// The message as it was before it failed: its own headers, without the letter's.
    fn original_headers(&self) -> OwnedHeaders {
        let mut out = OwnedHeaders::new();
        for h in self.message.headers().into_iter().flat_map(|h| h.iter()) {
            if !LETTER_HEADERS.contains(&h.key) {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        out
    }
}

/// Every dead letter on every dead-letter topic, oldest first per topic, each with where it
/// was sent again if it was (as dlq.redriven records).
pub fn dead_letters(
    config: &BusConfig,
    resolver: &dyn SchemaResolver,
) -> Result<Vec<DeadLetter>, BusError> {
    let mut redelivered = HashMap::new();
    for message in read_topic(config, EventKind::DeadLetterRedriven.topic())? {
        let payload = message.payload().unwrap_or_default();
        if let Ok(Event::DeadLetterRedriven(r)) = codec::decode(payload, resolver) {
            let id = format!("{}:{}:{}", r.dead_letter_topic, r.partition, r.offset);
            redelivered.insert(id, (r.redelivered_partition, r.redelivered_offset));
        }
    }
    let mut letters = Vec::new();
    for kind in EventKind::ALL {
        for message in read_topic(config, &dlq_topic(kind.topic()))? {
            let mut letter = DeadLetter::from_message(message);
            letter.redelivered = redelivered.get(&letter.id).copied();
            letters.push(letter);
        }
    }
    Ok(letters)
}

/// Who redrives, and why.
pub struct Redrive<'a> {
    pub operator: &'a str,
    pub reason: Option<&'a str>,
}

/// Sends each of `letters` not sent yet back to its source topic and records it; returns
/// the records (one a letter, in order).
pub async fn redrive(
    publisher: &Publisher,
    letters: &[DeadLetter],
    by: Redrive<'_>,
) -> Result<Vec<DeadLetterRedriven>, BusError> {
    let mut seen = HashSet::new();
    let mut groups: Vec<Vec<DeadLetter>> = vec![];
    let mut group_of = HashMap::new();
    for letter in letters.iter().filter(|l| l.redelivered.is_none()) {
        if !seen.insert(&letter.id) {
            continue;
        }
        let at = *group_of.entry(letter.source()).or_insert_with(|| {
            groups.push(vec![]);
            groups.len() - 1
        });
        groups[at].push(letter.clone());
    }
    let by = Who {
        operator: by.operator.to_string(),
        reason: by.reason.map(str::to_string),
    };
    // Owned futures: a caller may run this on any task (an HTTP handler's).
    let redeliveries = groups
        .into_iter()
        .map(|group| redeliver(publisher.clone(), group, by.clone()));
    let records: Vec<Vec<DeadLetterRedriven>> = futures::stream::iter(redeliveries)
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(records.into_iter().flatten().collect())
}

/// [`Redrive`], owned.
#[derive(Clone)]
struct Who {
    operator: String,
    reason: Option<String>,
}

/// Produces the message of `letters` (one source message) again, then records each letter.
async fn redeliver(
    publisher: Publisher,
    letters: Vec<DeadLetter>,
    by: Who,
) -> Result<Vec<DeadLetterRedriven>, BusError> {
    let first = &letters[0];
    let payload = first.message.payload().unwrap_or_default();
    let delivered = publisher
        .send(
            &first.source_topic,
            first.message.key(),
            payload,
            first.original_headers(),
        )
        .await?;
    let records: Vec<DeadLetterRedriven> = letters
        .iter()
        .map(|letter| DeadLetterRedriven {
            header: EventHeader::root("quark-dlq"),
            dead_letter_topic: letter.topic.clone(),
            partition: letter.partition,
            offset: letter.offset,
            source_topic: letter.source_topic.clone(),
            redelivered_partition: delivered.partition,
            redelivered_offset: delivered.offset,
            error_label: letter.error_label.clone(),
            consumer: letter.consumer.clone(),
            operator: by.operator.clone(),
            reason: by.reason.clone(),
        })
        .collect();
    let events: Vec<Event> = records.iter().cloned().map(Event::from).collect();
    publisher.publish_all(&events).await?;
    Ok(records)
}
