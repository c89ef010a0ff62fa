//! The message browser: the latest messages of every topic, kept as they came (bytes and
//! headers), decoded to JSON only when a page asks for them.

use quark_events::{Event, SchemaResolver, decode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A message as the tail read it.
pub struct Stored {
    /// Order of arrival at the dashboard, across topics: the pages' cursor.
    pub seq: u64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    /// What decoding told at arrival (the filters need it without decoding again).
    pub event_type: Option<String>,
    pub correlation_id: Option<String>,
    pub occurred_at_ms: Option<i64>,
    /// Its event id and its cause's, to order a chain by cause where times tie.
    pub event_id: Option<String>,
    pub causation_id: Option<String>,
}

/// What a page asks for; every field narrows the answer.
#[derive(Debug, Default, Deserialize)]
pub struct Query {
    pub topic: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub correlation: Option<String>,
    /// When the event occurred (ms since the epoch), inclusive bounds.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only messages older than this `seq` (the page before).
    pub before: Option<u64>,
    pub limit: Option<usize>,
    /// `asc`: oldest first by when they occurred, one page (a causal chain); otherwise newest
    /// first as they arrived, paged with `before`.
    pub order: Option<String>,
}

/// One message on a page.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub seq: u64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub headers: BTreeMap<String, String>,
    /// `single-object` (by fingerprint) or `confluent` (by schema id), and which.
    pub framing: String,
    pub schema: String,
    pub event_type: Option<String>,
    pub event: Option<Value>,
    /// Why it does not decode, when it does not.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub messages: Vec<Shown>,
    /// The `before` that gives the next (older) page, when there is one (newest first only).
    pub next_before: Option<u64>,
    /// Messages held that match, on this page or not.
    pub total: usize,
    /// Messages held across all topics, and how many per topic at most.
    pub held: usize,
    pub keep_per_topic: usize,
}

/// The latest `keep` messages of each topic.
pub struct Messages {
    keep: usize,
    topics: BTreeMap<String, VecDeque<Stored>>,
}

const PAGE: usize = 50;
const MOST: usize = 500;

impl Messages {
    pub fn new(keep: usize) -> Messages {
        Messages {
            keep: keep.max(1),
            topics: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, message: Stored) {
        let held = self.topics.entry(message.topic.clone()).or_default();
        if held.len() == self.keep {
            held.pop_front();
        }
        held.push_back(message);
    }

    pub fn held(&self) -> usize {
        self.topics.values().map(VecDeque::len).sum()
    }

    pub fn page(&self, query: &Query, resolver: &dyn SchemaResolver) -> Page {
        let limit = query.limit.unwrap_or(PAGE).clamp(1, MOST);
        let mut found: Vec<&Stored> = self
            .topics
            .iter()
            .filter(|(topic, _)| query.topic.as_ref().is_none_or(|t| t == *topic))
            .flat_map(|(_, held)| held.iter())
            .filter(|m| matches(m, query))
            .collect();
        // A chain reads in the order things happened (the tail reads topics side by side, so
        // its arrival order can differ); the newest-first pages go by arrival, their cursor.
        let ascending = query.order.as_deref() == Some("asc");
        match ascending {
            true => {
                let depth = depths(&found);
                found.sort_by_key(|m| {
                    let d = m.event_id.as_ref().and_then(|id| depth.get(id.as_str()));
                    (m.occurred_at_ms.or(m.timestamp_ms), d.copied(), m.seq)
                });
            }
            false => found.sort_by_key(|m| std::cmp::Reverse(m.seq)),
        }
        let total = found.len();
        found.truncate(limit);
        Page {
            next_before: (!ascending && total > limit)
                .then(|| found.last().map(|m| m.seq))
                .flatten(),
            total,
            messages: found.into_iter().map(|m| shown(m, resolver)).collect(),
            held: self.held(),
            keep_per_topic: self.keep,
        }
    }
}

/// How many causes up each message's chain goes among `found` (events can share a
/// millisecond; a cause still comes before its effects).
fn depths<'a>(found: &[&'a Stored]) -> HashMap<&'a str, usize> {
    let causes: HashMap<&str, &str> = found
        .iter()
        .filter_map(|m| Some((m.event_id.as_deref()?, m.causation_id.as_deref()?)))
        .collect();
    let depth = |mut id: &'a str| {
        let mut d = 0;
        while let Some(cause) = causes.get(id).filter(|_| d < found.len()) {
            (id, d) = (*cause, d + 1);
        }
        d
    };
    found
        .iter()
        .filter_map(|m| m.event_id.as_deref())
        .map(|id| (id, depth(id)))
        .collect()
}

fn matches(m: &Stored, q: &Query) -> bool {
    let at = m.occurred_at_ms.or(m.timestamp_ms);
    q.before.is_none_or(|b| m.seq < b)
        && q.event_type
            .as_ref()
            .is_none_or(|t| m.event_type.as_ref() == Some(t))
        && q.correlation
            .as_ref()
            .is_none_or(|c| m.correlation_id.as_ref() == Some(c))
        && q.since_ms.is_none_or(|s| at.is_some_and(|at| at >= s))
        && q.until_ms.is_none_or(|u| at.is_some_and(|at| at <= u))
}

/// The framing of `payload` and the schema it names.
fn framing(payload: &[u8]) -> (String, String) {
    match payload {
        [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => (
            "single-object".into(),
            rest[..8].iter().map(|b| format!("{b:02x}")).collect(),
        ),
        [0x00, a, b, c, d, ..] => (
            "confluent".into(),
            u32::from_be_bytes([*a, *b, *c, *d]).to_string(),
        ),
        _ => ("unknown".into(), String::new()),
    }
}

fn shown(m: &Stored, resolver: &dyn SchemaResolver) -> Shown {
    let (framing, schema) = framing(&m.payload);
    let (event, error) = match decode(&m.payload, resolver) {
        Ok(e) => (Some(Event::to_json(&e)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Shown {
        seq: m.seq,
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
        timestamp_ms: m.timestamp_ms,
        headers: m.headers.iter().cloned().collect(),
        framing,
        schema,
        event_type: m.event_type.clone(),
        event,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_events::{EventKind, LocalRegistry, encode, samples::sample};

    fn stored(seq: u64, topic: &str, kind: EventKind, at_ms: i64) -> Stored {
        let event = sample(kind, "test");
        Stored {
            seq,
            topic: topic.into(),
            partition: 0,
            offset: seq as i64,
            timestamp_ms: Some(at_ms),
            headers: vec![],
            payload: encode(&event).unwrap(),
            event_type: Some(kind.topic().into()),
            correlation_id: Some(if seq.is_multiple_of(2) { "even" } else { "odd" }.into()),
            occurred_at_ms: Some(at_ms),
            event_id: Some(seq.to_string()),
            causation_id: None,
        }
    }

    #[test]
    fn pages_go_back_through_every_match_once_and_filters_narrow() {
        let mut held = Messages::new(60);
        for seq in 1..=130 {
            let (topic, kind) = match seq % 3 {
                0 => ("feedback.received", EventKind::FeedbackReceived),
                _ => ("response.served", EventKind::ResponseServed),
            };
            held.add(stored(seq, topic, kind, 1_000 - seq as i64));
        }
        // 60 kept per topic: response.served lost its 27 oldest of 87.
        assert_eq!(held.held(), 43 + 60);
        let registry = LocalRegistry::empty();
        let mut query = Query {
            limit: Some(40),
            ..Query::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = held.page(&query, &registry);
            assert_eq!(page.total, 103 - seen.len());
            seen.extend(page.messages.iter().map(|m| m.seq));
            match page.next_before {
                Some(before) => query.before = Some(before),
                None => break,
            }
        }
        assert_eq!(seen.len(), 103);
        assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");

        let feedback = held.page(
            &Query {
                event_type: Some("feedback.received".into()),
                correlation: Some("even".into()),
                ..Query::default()
            },
            &registry,
        );
        assert_eq!(feedback.total, 21, "multiples of 6 up to 130");
        let first = &feedback.messages[0];
        assert_eq!((first.seq, first.framing.as_str()), (126, "single-object"));
        assert_eq!(first.event.as_ref().unwrap()["rating"], 1);

        // A chain reads oldest first by when things occurred, not by arrival.
        let chain = held.page(
            &Query {
                correlation: Some("odd".into()),
                order: Some("asc".into()),
                limit: Some(3),
                ..Query::default()
            },
            &registry,
        );
        let seqs: Vec<u64> = chain.messages.iter().map(|m| m.seq).collect();
        assert_eq!((seqs, chain.next_before), (vec![129, 127, 125], None));
    }
}
