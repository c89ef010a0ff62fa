//! Dead letters sent back after a fix, on the real broker: a consumer that could not handle
//! 1,000 events gives each up to the dead-letter topic; once it is fixed, `quark dlq
//! redrive --all` sends each back exactly once (a second redrive sends nothing), the consumer
//! handles each once, and every redrive is recorded as dlq.redriven with who and why.

use quark_e2e::*;
use quark_events::bus::{
    BusConfig, Publisher, Runner, dlq_topic, ensure_topics, inspect, positions,
};
use quark_events::{Event, EventKind};
use quark_journal::Journal;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LETTERS: usize = 1_000;
const WAIT: Duration = Duration::from_secs(120);

async fn handled(db: &DatabaseConnection) -> u64 {
    Journal::find().count(db).await.unwrap()
}

/// Messages the consumer has gone past on `topic`, over every partition.
async fn consumed(db: &DatabaseConnection, topic: &str) -> i64 {
    let all = positions(db).await.unwrap();
    all.iter()
        .filter(|p| p.0 == "mending" && p.1 == topic)
        .map(|p| p.3)
        .sum()
}

fn messages_on(bus: &BusConfig, topic: &str) -> i64 {
    inspect(bus)
        .unwrap()
        .iter()
        .find(|t| t.topic == topic)
        .map_or(0, |t| t.messages())
}

async fn cli(dir: &std::path::Path, bus: &BusConfig, args: &[&str]) -> String {
    let (dir, brokers) = (dir.to_path_buf(), bus.brokers.clone());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        quark_cli(&dir, &brokers, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_dead_letters_are_redriven_once_each_after_the_fix() {
    let broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::Sqlite.open(dir.path()).await;
    let topic = EventKind::FeedbackReceived.topic();
    let events: Vec<Event> = (0..LETTERS)
        .map(|i| feedback_on(&format!("req-{i}")))
        .collect();
    Publisher::new(&bus, "test")
        .unwrap()
        .publish_all(&events)
        .await
        .unwrap();

    let handler = Arc::new(Mending {
        broken: AtomicBool::new(true),
    });
    let shutdown = CancellationToken::new();
    let runner =
        tokio::spawn(Runner::new(handler.clone(), bus.clone(), db.clone()).run(shutdown.clone()));
    until("every event given up", WAIT, || async {
        consumed(&db, topic).await == LETTERS as i64
    })
    .await;
    assert_eq!(messages_on(&bus, &dlq_topic(topic)), LETTERS as i64);
    assert_eq!(handled(&db).await, 0);
    let listed = cli(dir.path(), &bus, &["dlq", "list"]).await;
    assert_eq!(listed.lines().count(), LETTERS, "{listed}");
    let first = listed.lines().next().unwrap();
    assert!(
        first.contains("given up by mending") && first.contains("[handler_permanent] ratings of 0"),
        "{first}"
    );
    // A letter that does not exist is refused by name.
    let unknown = std::process::Command::new(bin("quark"))
        .args(["dlq", "redrive", "feedback.received.dlq:0:999999"])
        .env("QUARK__BUS__BROKERS", &bus.brokers)
        .env("QUARK__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no dead letter feedback.received.dlq:0:999999")
    );

    // The fix is deployed; the letters go back, each once.
    handler.broken.store(false, Ordering::SeqCst);
    let args = [
        "dlq",
        "redrive",
        "--all",
        "--reason",
        "reads ratings of 0",
        "--by",
        "ops",
    ];
    let sent = cli(dir.path(), &bus, &args).await;
    assert_eq!(
        sent.trim(),
        "redrove 1000 dead letter(s) as 1000 message(s)"
    );
    until("every redriven event handled", WAIT, || async {
        consumed(&db, topic).await == 2 * LETTERS as i64
    })
    .await;
    assert_eq!(handled(&db).await, LETTERS as u64, "each handled once");
    assert_eq!(messages_on(&bus, topic), 2 * LETTERS as i64);
    let records = events_on(&bus, EventKind::DeadLetterRedriven.topic());
    assert_eq!(records.len(), LETTERS);
    let mut letters: Vec<(i32, i64)> = records
        .iter()
        .map(|e| match e {
            Event::DeadLetterRedriven(r) => {
                assert_eq!(
                    (r.operator.as_str(), r.reason.as_deref()),
                    ("ops", Some("reads ratings of 0"))
                );
                assert_eq!(
                    (r.source_topic.as_str(), r.consumer.as_str()),
                    (topic, "mending")
                );
                (r.partition, r.offset)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    letters.sort_unstable();
    letters.dedup();
    assert_eq!(letters.len(), LETTERS, "one record a letter");

    // Nothing is left to send: a second redrive sends nothing, and the list is empty.
    let again = cli(dir.path(), &bus, &args).await;
    assert_eq!(again.trim(), "redrove 0 dead letter(s) as 0 message(s)");
    assert_eq!(messages_on(&bus, topic), 2 * LETTERS as i64);
    assert_eq!(
        messages_on(&bus, EventKind::DeadLetterRedriven.topic()),
        LETTERS as i64
    );
    assert_eq!(cli(dir.path(), &bus, &["dlq", "list"]).await, "");
    let every = cli(dir.path(), &bus, &["dlq", "list", "--all", "--json"]).await;
    assert_eq!(every.lines().count(), LETTERS);
    assert!(
        every.lines().all(|l| l.contains("\"redelivered\":[")),
        "{every}"
    );
    shutdown.cancel();
    runner.await.unwrap().unwrap();
}
