//! What the page shows, kept up to date message by message as the tail reads the bus (so a
//! tick costs the same at 1 or 1,000 events/s), plus the topics' sizes and lags sampled each
//! tick.

mod cycles;
mod jobs;
mod messages;
mod models;
mod serving;
mod topics;

pub use messages::{Page, Query};

use quark_events::bus::{DeadLetter, TopicState, headers};
use quark_events::{Event, Id, SchemaResolver, decode};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet, VecDeque};

/// A dead letter as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Letter {
    pub id: String,
    pub source_topic: String,
    pub consumer: String,
    pub error_label: String,
    pub error: String,
    pub timestamp_ms: Option<i64>,
}

pub struct View {
    seq: u64,
    messages: messages::Messages,
    models: models::Models,
    serving: serving::Serving,
    cycles: cycles::Cycles,
    jobs: jobs::Jobs,
    topics: topics::Topics,
    letters: BTreeMap<String, Letter>,
    redriven: HashSet<String>,
    /// The latest events' ids, to count each event once.
    seen: HashSet<Id>,
    seen_order: VecDeque<Id>,
}

/// How many dead letters the page lists (all are counted, and redriven by "all").
const LETTERS: usize = 200;
/// How many of the latest event ids are remembered.
const SEEN: usize = 200_000;

/// The state the page gets each tick.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub at_ms: i64,
    pub topics: Vec<topics::TopicNow>,
    /// Dead letters not yet redriven, oldest first (the first [`LETTERS`]).
    pub dead_letters: Vec<Letter>,
    /// How many dead letters are not redriven yet.
    pub dead_letters_waiting: usize,
    #[serde(rename = "loop")]
    pub cycle: cycles::LoopNow,
    /// Training jobs running, then the latest finished.
    pub jobs: Vec<jobs::Job>,
    pub models: models::ModelsNow,
    pub serving: serving::ServingNow,
    /// Messages the tail has read since it started, across topics.
    pub read: u64,
    /// Messages the browser can page through.
    pub held: usize,
    /// Why the topics could not be read at the last tick, while they cannot.
    pub error: Option<String>,
}

impl View {
    /// A view that keeps the latest `keep` messages of each topic for the browser.
    pub fn new(keep: usize) -> View {
        View {
            seq: 0,
            messages: messages::Messages::new(keep),
            models: models::Models::default(),
            serving: serving::Serving::default(),
            cycles: cycles::Cycles::default(),
            jobs: jobs::Jobs::default(),
            topics: topics::Topics::default(),
            letters: BTreeMap::new(),
            redriven: HashSet::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
        }
    }

    /// Takes in one message of any Quark topic.
    pub fn ingest(&mut self, message: OwnedMessage, resolver: &dyn SchemaResolver) {
        self.seq += 1;
        let payload = message.payload().unwrap_or_default().to_vec();
        let decoded = decode(&payload, resolver).ok();
        let dead = message.topic().ends_with(".dlq");
        // A dead letter stands for a message counted on its own topic already, and a
        // redelivered one is a copy: each event counts once, by its id.
        if let Some(event) = decoded.as_ref().filter(|_| !dead)
            && self.first_sight(event.header().event_id)
        {
            self.learn(event);
        }
        let headers = message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| {
                let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                (h.key.to_string(), value.into_owned())
            })
            .collect::<Vec<_>>();
        let event_type = decoded
            .as_ref()
            .map(|e| e.kind().topic().to_string())
            .or_else(|| {
                headers
                    .iter()
                    .find(|(k, _)| k == headers::EVENT_TYPE)
                    .map(|(_, v)| v.clone())
            });
        let stored = messages::Stored {
            seq: self.seq,
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            headers,
            payload,
            event_type,
            correlation_id: decoded
                .as_ref()
                .map(|e| e.header().correlation_id.to_string()),
            occurred_at_ms: decoded.as_ref().map(|e| e.header().occurred_at.0),
            event_id: decoded.as_ref().map(|e| e.header().event_id.to_string()),
            causation_id: decoded
                .as_ref()
                .and_then(|e| e.header().causation_id)
                .map(|c| c.to_string()),
        };
        if dead {
            self.dead_letter(message);
        }
        self.messages.add(stored);
    }

    /// Whether `id` is new among the latest events seen.
    fn first_sight(&mut self, id: Id) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        if self.seen_order.len() == SEEN
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen_order.push_back(id);
        true
    }

    fn learn(&mut self, event: &Event) {
        self.cycles.saw(event);
        match event {
            Event::ModelTrained(e) => {
                self.models.trained(e);
                self.jobs.trained(e);
            }
            Event::TrainingProgressed(e) => self.jobs.progressed(e),
            Event::EvalCompleted(e) => self.models.completed(e),
            Event::EvalRegressed(e) => self.models.regressed(e),
            Event::ModelPromoted(e) => self.models.promoted(e),
            Event::ResponseServed(e) => self.serving.served(e),
            Event::TelemetryReported(e) => self.serving.reported(e),
            Event::FeedbackReceived(e) => self.serving.feedback(e),
            Event::DeadLetterRedriven(r) => {
                let id = format!("{}:{}:{}", r.dead_letter_topic, r.partition, r.offset);
                self.letters.remove(&id);
                self.redriven.insert(id);
            }
            _ => {}
        }
    }

    fn dead_letter(&mut self, message: OwnedMessage) {
        let letter = DeadLetter::from_message(message);
        if self.redriven.contains(&letter.id) {
            return;
        }
        self.letters.insert(
            letter.id.clone(),
            Letter {
                id: letter.id,
                source_topic: letter.source_topic,
                consumer: letter.consumer,
                error_label: letter.error_label,
                error: letter.error,
                timestamp_ms: letter.timestamp_ms,
            },
        );
    }

    /// Records the topics' sizes and every consumer's lag at `at_ms`.
    pub fn sample(
        &mut self,
        at_ms: i64,
        states: &[TopicState],
        positions: &[(String, String, i32, i64)],
    ) {
        self.topics.sample(at_ms, states, positions);
    }

    pub fn page(&self, query: &Query, resolver: &dyn SchemaResolver) -> Page {
        self.messages.page(query, resolver)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut letters: Vec<Letter> = self.letters.values().cloned().collect();
        letters.sort_by_key(|l| l.timestamp_ms);
        let dead: BTreeMap<&str, usize> = letters.iter().fold(BTreeMap::new(), |mut m, l| {
            *m.entry(l.source_topic.as_str()).or_default() += 1;
            m
        });
        let topics = self.topics.now(&dead);
        let mut models = self.models.now();
        for v in &mut models.versions {
            v.cause = self.cycles.cause(&v.correlation_id);
        }
        let waiting = letters.len();
        letters.truncate(LETTERS);
        Snapshot {
            at_ms: self.topics.last_ms(),
            topics,
            dead_letters: letters,
            dead_letters_waiting: waiting,
            cycle: self.cycles.now(),
            jobs: self.jobs.now(),
            models,
            serving: self.serving.now(),
            read: self.seq,
            held: self.messages.held(),
            error: None,
        }
    }
}
