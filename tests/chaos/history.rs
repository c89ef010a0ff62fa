//! What the chaos run left behind, checked once the loop has settled: the topics, every
//! consumer's idempotency ledger, the services' tables, the knowledge index and a replay of
//! the registry.

use super::Chaos;
use quark_events::bus::ProcessedEvents;
use quark_events::bus::headers::CONSUMER;
use quark_events::bus::{BusConfig, PartitionState, inspect};
use quark_events::{Event, LocalRegistry, decode};
use quark_journal::{Journal, JournalEntry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, Statement};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

/// How long the loop may take to settle once the killing stops.
const SETTLE: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct Report {
    /// Messages on the topics, and the distinct events among them (a producer that died
    /// before its acknowledgement sends the same event again).
    messages: usize,
    events: usize,
    /// (consumer, event) pairs owed by the subscriptions, and those in the ledgers.
    owed: usize,
    consumed: usize,
    lost: Vec<String>,
    /// Events some consumer processed that the topics do not hold.
    off_the_bus: Vec<String>,
    /// Partitions whose end the broker reports other than where a reader finds it.
    ends_disagree: Vec<String>,
    dead_letters: Vec<String>,
    duplicates: Vec<String>,
    trained: usize,
    promotions: usize,
    promotions_asked: usize,
    corrections: usize,
    examples: usize,
    journal: usize,
    /// Events on the journal's topics.
    journalled: usize,
    index_rows: u64,
    documents: usize,
    registry_equals_replay: bool,
    /// For each consumer that lost events, its last group changes (assigned, revoked,
    /// rebalance failed), to tell a stuck group from a slow one.
    groups: Vec<String>,
    /// Registry rows that only the live registry or only its replay has.
    pub replay_differences: Vec<String>,
}

impl Report {
    pub fn assert_clean(&self) {
        assert!(
            self.lost.is_empty(),
            "lost: {:?}\nthe groups of those consumers, as their last members logged them:\n{}",
            self.lost,
            self.groups.join("\n")
        );
        assert!(
            self.dead_letters.is_empty(),
            "dead letters: {:?}",
            self.dead_letters
        );
        assert!(
            self.duplicates.is_empty(),
            "duplicates: {:?}",
            self.duplicates
        );
        assert_eq!(self.owed, self.consumed);
        assert!(
            self.ends_disagree.is_empty(),
            "ends reported wrongly: {:?}",
            self.ends_disagree
        );
        assert!(
            self.off_the_bus.is_empty(),
            "processed, but not on the topics: {:#?}",
            self.off_the_bus
        );
        assert!(self.trained >= 2 && self.promotions >= 3, "{self}");
        assert_eq!(
            self.examples, self.corrections,
            "one SFT example per correction"
        );
        assert_eq!(self.journal, self.journalled, "one journal row per event");
        assert_eq!(
            self.index_rows as usize, self.documents,
            "one index row per passage"
        );
        assert!(
            self.registry_equals_replay,
            "the registry differs from its replay"
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages, {} events published; {} of {} deliveries owed to subscribers consumed, \
             lost {}, processed but not on the topics {}, partition ends reported wrongly {}, dead letters {}, duplicates {}; {} models trained, {} promotions \
             ({} asked by operators); {} SFT examples for {} distinct corrections; {} journal rows for {} \
             events journalled; \
             {} index rows for {} passages; registry == replay: {}",
            self.messages,
            self.events,
            self.consumed,
            self.owed,
            self.lost.len(),
            self.off_the_bus.len(),
            self.ends_disagree.len(),
            self.dead_letters.len(),
            self.duplicates.len(),
            self.trained,
            self.promotions,
            self.promotions_asked,
            self.examples,
            self.corrections,
            self.journal,
            self.journalled,
            self.index_rows,
            self.documents,
            self.registry_equals_replay
        )
    }
}

/// The topics as they stand: every event by topic, and the dead letters.
struct Topics {
    messages: usize,
    by_topic: BTreeMap<String, BTreeMap<String, Event>>,
    dead: Vec<OwnedMessage>,
    /// Partitions whose end the broker reports other than where a reader finds it.
    ends_disagree: Vec<String>,
}

/// Every message of `topic`'s `partitions`, each read from its start until the broker says
/// it is at the end (partition EOF), with the offset each end was found at.
fn read_to_end(
    bus: &BusConfig,
    topic: &str,
    partitions: &[PartitionState],
) -> (Vec<OwnedMessage>, Vec<i64>) {
    let consumer: BaseConsumer = bus
        .consumer_config("chaos-reader", "chaos-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition_offset(topic, p.partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut messages = vec![];
    let (mut ends, mut next) = (BTreeMap::new(), BTreeMap::new());
    let started = Instant::now();
    while ends.len() < partitions.len() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{topic}: only partitions {ends:?} of {} read to their end",
            partitions.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                next.insert(message.partition(), message.offset() + 1);
                messages.push(message.detach());
            }
            // Within one topic the partition number says which partition ended; a partition
            // with nothing read ends where it starts.
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                let start = partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .unwrap()
                    .low;
                ends.insert(partition, next.get(&partition).copied().unwrap_or(start));
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    (messages, ends.into_values().collect())
}

impl Topics {
    /// Every partition read to its end as a reader finds it (not to the end the broker
    /// reports), and the partitions where the two disagree.
    fn read(chaos: &Chaos) -> Topics {
        let registry = LocalRegistry::default();
        let mut topics = Topics {
            messages: 0,
            by_topic: BTreeMap::new(),
            dead: vec![],
            ends_disagree: vec![],
        };
        let bus = chaos.stack.broker.bus();
        // The broker may have been killed last and still be starting.
        let started = Instant::now();
        let reported = loop {
            match inspect(&bus) {
                Ok(reported) => break reported,
                Err(error) if started.elapsed() < Duration::from_secs(60) => {
                    eprintln!("chaos: asking the broker for the topics' ends: {error}");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(error) => panic!("the broker gives no ends: {error}"),
            }
        };
        let read: Vec<(Vec<OwnedMessage>, Vec<i64>)> = std::thread::scope(|scope| {
            let readers: Vec<_> = reported
                .iter()
                .map(|t| {
                    let bus = &bus;
                    scope.spawn(move || read_to_end(bus, &t.topic, &t.partitions))
                })
                .collect();
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let mut messages = vec![];
        for (state, (found, ends)) in reported.iter().zip(read) {
            for (p, end) in state.partitions.iter().zip(ends) {
                if p.high != end {
                    topics.ends_disagree.push(format!(
                        "{}/{}: reported end {}, read to {end}",
                        state.topic, p.partition, p.high
                    ));
                }
            }
            messages.extend(found);
        }
        for message in messages {
            if message.topic().ends_with(".dlq") {
                topics.dead.push(message);
                continue;
            }
            topics.messages += 1;
            let event = decode(message.payload().unwrap(), &registry).unwrap();
            topics
                .by_topic
                .entry(message.topic().to_string())
                .or_default()
                .insert(event.header().event_id.to_string(), event);
        }
        topics
    }

    fn events(&self) -> impl Iterator<Item = &Event> {
        self.by_topic.values().flat_map(|events| events.values())
    }

    /// (consumer, topic) of each dead letter.
    fn dead_letters(&self) -> Vec<String> {
        self.dead
            .iter()
            .map(|m| {
                let consumer = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == CONSUMER)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                format!("{} by {consumer:?}", m.topic())
            })
            .collect()
    }
}

/// Each consumer and the topics it subscribes to, from the runners' `consuming` log lines.
fn subscriptions(chaos: &Chaos) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for service in super::SERVICES {
        for fields in chaos.stack.log_fields(service) {
            if fields["message"] != "consuming" {
                continue;
            }
            let consumer = fields["consumer"].as_str().unwrap().to_string();
            // `?topics` logs the list as Rust prints it: ["a", "b"].
            let topics = fields["topics"].as_str().unwrap();
            found
                .entry(consumer)
                .or_default()
                .extend(topics.split('"').skip(1).step_by(2).map(str::to_string));
        }
    }
    found
}

/// The deliveries owed (consumer, event) that no ledger holds.
async fn unconsumed(
    topics: &Topics,
    subscribed: &BTreeMap<String, BTreeSet<String>>,
    db: &DatabaseConnection,
) -> (usize, Vec<String>) {
    let ledger: BTreeSet<(String, String)> = ProcessedEvents::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.consumer, row.event_id))
        .collect();
    let mut owed = 0;
    let mut missing = vec![];
    for (consumer, subscribed) in subscribed {
        for topic in subscribed {
            for id in topics
                .by_topic
                .get(topic)
                .into_iter()
                .flat_map(|e| e.keys())
            {
                owed += 1;
                if !ledger.contains(&(consumer.clone(), id.clone())) {
                    missing.push(format!("{consumer} never processed {topic} {id}"));
                }
            }
        }
    }
    (owed, missing)
}

/// Events that some consumer processed but the topics do not hold (the broker lost them after
/// acknowledging them, or they were not read back), each with its journal row when it has one.
async fn processed_off_the_bus(topics: &Topics, db: &DatabaseConnection) -> Vec<String> {
    let on_bus: BTreeSet<&String> = topics.by_topic.values().flat_map(|e| e.keys()).collect();
    let mut processors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in ProcessedEvents::find().all(db).await.unwrap() {
        if !on_bus.contains(&row.event_id) {
            processors
                .entry(row.event_id)
                .or_default()
                .push(row.consumer);
        }
    }
    let mut journal: BTreeMap<String, JournalEntry> = BTreeMap::new();
    for entry in Journal::find().all(db).await.unwrap() {
        journal.insert(entry.event_id.clone(), entry);
    }
    processors
        .into_iter()
        .map(|(id, by)| match journal.get(&id) {
            Some(e) => format!(
                "{} {id} from {} at {} ms, processed by {by:?}",
                e.event_type, e.producer, e.occurred_at
            ),
            None => format!("{id}, processed by {by:?}"),
        })
        .collect()
}

/// Waits until every consumer has processed every event of its topics and no new event has
/// appeared since the last look (restarting anything that dies meanwhile).
fn settle(chaos: &mut Chaos, runtime: &tokio::runtime::Runtime, db: &DatabaseConnection) -> Topics {
    chaos.stop_killing();
    let started = Instant::now();
    let mut seen = usize::MAX;
    loop {
        chaos.tick();
        let topics = Topics::read(chaos);
        let (_, missing) = runtime.block_on(unconsumed(&topics, &subscriptions(chaos), db));
        if missing.is_empty() && topics.messages == seen {
            return topics;
        }
        if started.elapsed() > SETTLE {
            // Reported as lost by the caller.
            return topics;
        }
        seen = topics.messages;
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Effects that each cause may have once: models per training request, promotions per
/// evaluation or operator request.
fn duplicated_effects(topics: &Topics) -> Vec<String> {
    let mut effects: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for event in topics.events() {
        let Some(cause) = event.header().causation_id else {
            continue;
        };
        let (kind, effect) = match event {
            Event::ModelTrained(m) => ("model.trained".to_string(), m.model_id.to_string()),
            // One move of each alias per cause (a promotion also moves `previous`).
            Event::ModelPromoted(p) => (
                format!("model.promoted of {:?} {:?}", p.alias, p.alias_name),
                p.header.event_id.to_string(),
            ),
            _ => continue,
        };
        effects
            .entry((cause.to_string(), kind))
            .or_default()
            .insert(effect);
    }
    effects
        .into_iter()
        .filter(|(_, effects)| effects.len() > 1)
        .map(|((cause, kind), effects)| format!("{} {kind} caused by {cause}", effects.len()))
        .collect()
}

fn group_changes(chaos: &Chaos, lost: &[String]) -> Vec<String> {
    let consumers: BTreeSet<&str> = lost.iter().filter_map(|l| l.split(' ').next()).collect();
    let mut lines = vec![];
    for service in super::SERVICES {
        for entry in chaos.stack.log_of(service).lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(entry) else {
                continue;
            };
            let fields = &entry["fields"];
            let mine = fields["consumer"]
                .as_str()
                .is_some_and(|c| consumers.contains(c));
            let change = fields["message"].as_str().is_some_and(|m| {
                m.starts_with("partitions") || m.starts_with("rebalance") || m == "consuming"
            });
            if mine && change {
                lines.push(format!("{} {fields}", entry["timestamp"]));
            }
        }
    }
    lines.sort();
    lines.split_off(lines.len().saturating_sub(30))
}

async fn count(db: &DatabaseConnection, sql: &str) -> usize {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap() as usize
}

/// Stops the registry, then compares what it built with what `quark replay` rebuilds.
fn registry_equals_replay(
    chaos: &mut Chaos,
    runtime: &tokio::runtime::Runtime,
    db: &DatabaseConnection,
) -> Vec<String> {
    chaos.restarts.retain(|(_, service)| *service != "registry");
    if let Some(mut registry) = chaos.processes.remove("registry") {
        registry.crash();
    }
    let live = runtime.block_on(quark_registry::snapshot(db)).unwrap();
    let out = chaos.stack.command(&["replay"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = runtime.block_on(quark_registry::snapshot(db)).unwrap();
    // Each table's rows that one side has and the other lacks.
    let mut differences = vec![];
    for (table, rows) in live.as_object().unwrap() {
        let rows = rows.as_array().unwrap();
        let other = replayed[table].as_array().cloned().unwrap_or_default();
        for row in rows.iter().filter(|r| !other.contains(r)) {
            differences.push(format!("{table}: live only {row}"));
        }
        for row in other.iter().filter(|r| !rows.contains(r)) {
            differences.push(format!("{table}: replay only {row}"));
        }
    }
    differences
}

pub fn check(chaos: &mut Chaos, documents: usize) -> Report {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime
        .block_on(sea_orm::Database::connect(&chaos.database))
        .unwrap();
    let topics = settle(chaos, &runtime, &db);
    let subscribed = subscriptions(chaos);
    let (owed, lost) = runtime.block_on(unconsumed(&topics, &subscribed, &db));
    let journalled = subscribed["journal"]
        .iter()
        .filter_map(|topic| topics.by_topic.get(topic))
        .map(BTreeMap::len)
        .sum();
    let corrections: BTreeSet<&str> = topics
        .events()
        .filter_map(|e| match e {
            Event::FeedbackReceived(f) => f.correction.as_deref(),
            _ => None,
        })
        .collect();
    let lance = chaos.stack.data.path().join("quark").join("knowledge");
    let index =
        quark_retrieval::store::KnowledgeStore::open(lance.to_str().unwrap(), Default::default());
    let mut report = Report {
        messages: topics.messages,
        events: topics.events().count(),
        journalled,
        owed,
        consumed: owed - lost.len(),
        lost,
        off_the_bus: runtime.block_on(processed_off_the_bus(&topics, &db)),
        ends_disagree: topics.ends_disagree.clone(),
        dead_letters: topics.dead_letters(),
        duplicates: duplicated_effects(&topics),
        trained: topics
            .by_topic
            .get("model.trained")
            .map_or(0, BTreeMap::len),
        promotions: topics
            .by_topic
            .get("model.promoted")
            .map_or(0, BTreeMap::len),
        promotions_asked: topics
            .by_topic
            .get("promotion.requested")
            .map_or(0, BTreeMap::len),
        corrections: corrections.len(),
        examples: runtime.block_on(count(
            &db,
            "SELECT count(*) FROM augmenter_examples WHERE kind = 'sft'",
        )),
        journal: runtime.block_on(count(&db, "SELECT count(*) FROM journal")),
        index_rows: runtime
            .block_on(async { index.await.unwrap().rows("knowledge").await.unwrap() }),
        documents,
        registry_equals_replay: false,
        groups: vec![],
        replay_differences: vec![],
    };
    report.groups = group_changes(chaos, &report.lost);
    report.replay_differences = registry_equals_replay(chaos, &runtime, &db);
    report.registry_equals_replay = report.replay_differences.is_empty();
    report
}
