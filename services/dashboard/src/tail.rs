//! The tail: one reader of every Quark topic from its first message, feeding the view as
//! messages arrive. It joins no consumer group (partitions are assigned), so it takes nothing
//! from the services' groups, and it looks for topics created after it started.

use crate::view::View;
use quark_events::SchemaResolver;
use quark_events::bus::{BusConfig, BusError, quark_topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often it looks for new topics.
const NEW_TOPICS: Duration = Duration::from_secs(5);
/// How long it waits after the bus failed it before it tries again.
const AGAIN: Duration = Duration::from_secs(1);
const METADATA: Duration = Duration::from_secs(10);
/// How long one fetch waits for new messages, and for how many bytes of them.
const FETCH_WAIT_MS: u64 = 500;
const FETCH_MIN_BYTES: u64 = 1 << 20;

/// Reads the bus into `view` on a thread of its own until `stop`.
pub fn spawn(
    bus: BusConfig,
    resolver: Arc<dyn SchemaResolver>,
    view: Arc<Mutex<View>>,
    stop: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("dashboard-tail".into())
        .spawn(move || {
            // Where it has read to, so a new connection goes on from there.
            let mut next: HashMap<(String, i32), i64> = HashMap::new();
            while !stop.is_cancelled() {
                if let Err(e) = read(&bus, resolver.as_ref(), &view, &stop, &mut next) {
                    warn!(error = %e, "dashboard: reading the bus failed; trying again");
                    std::thread::sleep(AGAIN);
                }
            }
        })
        .expect("a thread can be started")
}

fn read(
    bus: &BusConfig,
    resolver: &dyn SchemaResolver,
    view: &Mutex<View>,
    stop: &CancellationToken,
    next: &mut HashMap<(String, i32), i64>,
) -> Result<(), BusError> {
    let consumer: BaseConsumer = bus
        .client_config("quark-dashboard")
        .set("group.id", "quark-dashboard")
        .set("enable.auto.commit", "false")
        // It reads every partition of every topic: fetches that wait for a batch ask the
        // broker far less often, and a page that changes once a tick loses nothing by them.
        .set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string())
        .set("fetch.min.bytes", FETCH_MIN_BYTES.to_string())
        .create()?;
    let mut assigned = HashSet::new();
    let mut looked = None::<Instant>;
    while !stop.is_cancelled() {
        if looked.is_none_or(|at| at.elapsed() >= NEW_TOPICS) {
            assign_new(&consumer, &mut assigned, next)?;
            looked = Some(Instant::now());
        }
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = received?.detach();
        let at = (message.topic().to_string(), message.partition());
        next.insert(at, message.offset() + 1);
        view.lock()
            .expect("the view is never left half-written")
            .ingest(message, resolver);
    }
    Ok(())
}

/// Assigns the partitions of Quark topics that exist now and are not read yet, from where it
/// read to before or from their start.
fn assign_new(
    consumer: &BaseConsumer,
    assigned: &mut HashSet<(String, i32)>,
    next: &HashMap<(String, i32), i64>,
) -> Result<(), BusError> {
    let wanted = quark_topics();
    let metadata = consumer.fetch_metadata(None, METADATA)?;
    let mut list = TopicPartitionList::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| wanted.iter().any(|w| w == t.name()))
    {
        for p in topic.partitions() {
            let key = (topic.name().to_string(), p.id());
            if assigned.contains(&key) {
                continue;
            }
            let from = next
                .get(&key)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            list.add_partition_offset(&key.0, key.1, from)?;
            assigned.insert(key);
        }
    }
    if list.count() > 0 {
        consumer.incremental_assign(&list)?;
    }
    Ok(())
}
