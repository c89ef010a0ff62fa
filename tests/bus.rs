//! The bus against the real embedded broker: round trips, dead letters, retries, crash safety,
//! shutdown, trace context and the projection on SQLite and PostgreSQL.

use async_trait::async_trait;
use quark_e2e::*;
use quark_events::bus::{
    Handler, HandlerError, Publisher, RetryPolicy, Runner, dlq_topic, ensure_topics, headers,
    inspect,
};
use quark_events::samples::sample;
use quark_events::{
    Event, EventHeader, EventKind, RetrainRequested, RetrainTrigger, RunKind, Timestamp, encode,
};
use quark_journal::{Journal, JournalService};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedHeaders};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, PaginatorTrait};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// A broker with Quark's topics and an empty database, for one test.
struct World {
    _broker: TestBroker,
    _dir: tempfile::TempDir,
    bus: BusConfig,
    db: DatabaseConnection,
}

impl World {
    async fn start(db: TestDb) -> World {
        let broker = TestBroker::start();
        let bus = broker.bus();
        ensure_topics(&bus).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = db.open(dir.path()).await;
        World {
            _broker: broker,
            _dir: dir,
            bus,
            db,
        }
    }
}

async fn journal_rows(db: &DatabaseConnection) -> u64 {
    Journal::find().count(db).await.unwrap()
}

fn header<'a>(message: &'a rdkafka::message::OwnedMessage, key: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_round_trips_through_the_broker() {
    let broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    ensure_topics(&bus)
        .await
        .expect("creating existing topics is a no-op");
    let publisher = Publisher::new(&bus, "test").unwrap();
    for kind in EventKind::ALL {
        let event = sample(*kind, "round-trip");
        publisher.publish(&event).await.unwrap();
        let messages = read_topic(&bus, kind.topic(), 1);
        assert_eq!(decode_all(&messages), vec![event.clone()], "{kind}");
        assert_eq!(
            header(&messages[0], headers::EVENT_TYPE),
            Some(kind.topic())
        );
        assert_eq!(
            messages[0].key(),
            Some(event.header().correlation_id.to_string().as_bytes())
        );
    }
}

/// A handler whose behaviour each test scripts: it emits a retrain request per feedback event,
/// fails as told, and records effects in the journal.
#[derive(Default)]
struct Scripted {
    transient_failures: Mutex<HashMap<String, u32>>,
    permanent: HashSet<String>,
    calls: Mutex<u32>,
}

#[async_trait]
impl Handler for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::FeedbackReceived]
    }
    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        *self.calls.lock().unwrap() += 1;
        let Event::FeedbackReceived(feedback) = event else {
            unreachable!("subscribed to feedback only")
        };
        if self.permanent.contains(&feedback.request_id) {
            return Err(HandlerError::Permanent(format!(
                "request {} is not retrainable",
                feedback.request_id
            )));
        }
        if let Some(left) = self
            .transient_failures
            .lock()
            .unwrap()
            .get_mut(&feedback.request_id)
            .filter(|n| **n > 0)
        {
            *left -= 1;
            return Err(HandlerError::Transient("model store busy".into()));
        }
        Ok(vec![Event::from(RetrainRequested {
            header: EventHeader::caused_by(&feedback.header, self.name(), "retrain"),
            request_id: quark_events::Id::derived(feedback.header.event_id, "request"),
            run_kind: RunKind::Sft,
            base_model_id: None,
            dataset_ids: vec![],
            trigger: RetrainTrigger::FeedbackThreshold,
            reason: format!("feedback on {}", feedback.request_id),
        })])
    }
    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        JournalService.apply(event, txn).await
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_consumer_goes_on() {
    let world = World::start(TestDb::Sqlite).await;
    let (bus, db) = (world.bus.clone(), world.db.clone());
    let publisher = Publisher::new(&bus, "test").unwrap();
    let topic = EventKind::FeedbackReceived.topic();

    let good = encode(&feedback_on("good-0")).unwrap();
    let mut unknown_fingerprint = good.clone();
    unknown_fingerprint[2..10].copy_from_slice(&[7; 8]);
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (
            // Random bytes behind a first byte that no framing uses.
            std::iter::once(0x7f)
                .chain((0..63).map(|_| rand::random::<u8>()))
                .collect(),
            "unknown_framing",
        ),
        (good[..good.len() / 2].to_vec(), "invalid_avro"),
        (unknown_fingerprint, "unknown_fingerprint"),
        (
            encode(&sample(EventKind::ModelTrained, "test")).unwrap(),
            "wrong_topic",
        ),
    ];
    let mut good_ids = Vec::new();
    for (i, (bytes, _)) in poison.iter().enumerate() {
        let event = feedback_on(&format!("good-{i}"));
        good_ids.push(event.header().event_id.to_string());
        publisher.publish(&event).await.unwrap();
        // Same key as the good ones so they share a partition and order matters.
        publisher
            .send(
                topic,
                Some(event.header().correlation_id.to_string().as_bytes()),
                bytes,
                OwnedHeaders::new(),
            )
            .await
            .unwrap();
    }
    let last = feedback_on("good-last");
    publisher.publish(&last).await.unwrap();

    let handler = Arc::new(Scripted::default());
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(handler.clone(), bus.clone(), db.clone())
            .with_retry(fast_retries())
            .run(shutdown.clone()),
    );
    until("the good events", WAIT, || async {
        journal_rows(&db).await == 5
    })
    .await;

    let dead = read_topic(&bus, &dlq_topic(topic), poison.len());
    let mut labels: Vec<&str> = dead
        .iter()
        .map(|m| header(m, headers::ERROR_LABEL).unwrap())
        .collect();
    let mut expected: Vec<&str> = poison.iter().map(|(_, l)| *l).collect();
    labels.sort();
    expected.sort();
    assert_eq!(labels, expected);
    for message in &dead {
        let (bytes, _) = poison
            .iter()
            .find(|(_, l)| Some(*l) == header(message, headers::ERROR_LABEL))
            .unwrap();
        assert_eq!(
            message.payload().unwrap(),
            bytes.as_slice(),
            "the original bytes are kept"
        );
        assert_eq!(header(message, headers::SOURCE_TOPIC), Some(topic));
        assert!(
            header(message, headers::SOURCE_OFFSET)
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        assert_eq!(header(message, headers::CONSUMER), Some("scripted"));
        assert!(!header(message, headers::ERROR).unwrap().is_empty());
    }
    // The good events were each handled once and emitted one retrain request each.
    assert_eq!(*handler.calls.lock().unwrap(), 5);
    let outputs = decode_all(&read_topic(&bus, EventKind::RetrainRequested.topic(), 5));
    let causes: HashSet<String> = outputs
        .iter()
        .map(|e| e.header().causation_id.unwrap().to_string())
        .collect();
    assert!(good_ids.iter().all(|id| causes.contains(id)));
    shutdown.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_and_permanent_ones_dead_lettered() {
    let world = World::start(TestDb::Sqlite).await;
    let (bus, db) = (world.bus.clone(), world.db.clone());
    let publisher = Publisher::new(&bus, "test").unwrap();
    for id in ["flaky", "broken", "hopeless", "fine"] {
        publisher.publish(&feedback_on(id)).await.unwrap();
    }
    let handler = Arc::new(Scripted {
        // Two failures are retried within 3 attempts; five are not.
        transient_failures: Mutex::new(
            [("flaky".to_string(), 2), ("hopeless".to_string(), 5)].into(),
        ),
        permanent: ["broken".to_string()].into(),
        ..Default::default()
    });
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(handler.clone(), bus.clone(), db.clone())
            .with_retry(fast_retries())
            .run(shutdown.clone()),
    );
    let dead = read_topic(&bus, &dlq_topic(EventKind::FeedbackReceived.topic()), 2);
    until("flaky and fine", WAIT, || async {
        journal_rows(&db).await == 2
    })
    .await;
    let mut labels: Vec<_> = dead
        .iter()
        .map(|m| header(m, headers::ERROR_LABEL).unwrap().to_string())
        .collect();
    labels.sort();
    assert_eq!(labels, ["handler_permanent", "handler_transient"]);
    // flaky: 3 calls, broken: 1, hopeless: 3 (max attempts), fine: 1.
    assert_eq!(*handler.calls.lock().unwrap(), 8);
    shutdown.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_what_was_processed() {
    let broker = TestBroker::start();
    let bus = BusConfig {
        commit_interval_ms: 60_000,
        ..broker.bus()
    };
    ensure_topics(&bus).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::Sqlite.open(dir.path()).await;
    let events: Vec<Event> = (0..50).map(|i| feedback_on(&format!("r{i}"))).collect();
    Publisher::new(&bus, "test")
        .unwrap()
        .publish_all(&events)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(Arc::new(JournalService), bus.clone(), db.clone()).run(shutdown.clone()),
    );
    until("all events", WAIT, || async {
        journal_rows(&db).await == 50
    })
    .await;
    // The auto-commit interval is a minute: only the shutdown commit can make the lag zero.
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    let topic = EventKind::FeedbackReceived.topic();
    let end: i64 = inspect(&bus)
        .unwrap()
        .iter()
        .find(|s| s.topic == topic)
        .unwrap()
        .messages();
    assert_eq!(end, 50);
    assert_eq!(
        committed_offsets(&bus, "journal", topic)
            .iter()
            .sum::<i64>(),
        50,
        "every processed offset committed"
    );
    // The runner's own record, which `quark topics` reports as lag, agrees.
    let positions = quark_events::bus::positions(&db).await.unwrap();
    assert_eq!(
        positions
            .iter()
            .filter(|p| p.0 == "journal" && p.1 == topic)
            .map(|p| p.3)
            .sum::<i64>(),
        50
    );
}

use quark_events::bus::BusConfig;

/// A consumer process killed mid-stream, then the broker killed and restarted under a running
/// consumer: every event is applied exactly once.
///
/// (The two crashes are staged one after the other: Tansu 0.6 keeps a member that died before a
/// broker restart in its group for good, so a replacement consumer never gets partitions — a
/// broker defect documented in docs/operations.md, not something a client can repair.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_of_consumer_and_broker_lose_nothing_and_apply_nothing_twice() {
    let mut broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = TestDb::Sqlite.url(dir.path()).await;
    let db = quark_runtime::db::open::<quark::Migrator>(&url)
        .await
        .unwrap();
    let publisher = Publisher::new(&bus, "test").unwrap();
    let first: Vec<Event> = (0..1500).map(|i| feedback_on(&format!("a{i}"))).collect();
    // Concurrent sends with linger: the broker stores multi-record batches.
    publisher.publish_all(&first).await.unwrap();

    let consumer = |broker: &TestBroker| {
        Process(
            std::process::Command::new(bin("quark"))
                .args(["run", "journal"])
                .env("QUARK__BUS__BROKERS", &broker.address)
                .env("QUARK__BUS__COMMIT_INTERVAL_MS", "100")
                .env("QUARK__BUS__SESSION_TIMEOUT_MS", "6000")
                .env("QUARK__BUS__MAX_POLL_INTERVAL_MS", "10000")
                .env("QUARK__DATABASE__URL", &url)
                .env("QUARK__TELEMETRY__LOG", "error")
                .spawn()
                .unwrap(),
        )
    };
    let mut process = consumer(&broker);
    until("some progress", WAIT, || async {
        journal_rows(&db).await >= 300
    })
    .await;
    process.crash();
    let applied_at_crash = journal_rows(&db).await;
    assert!(
        applied_at_crash > 0 && applied_at_crash < 1500,
        "the crash should land mid-stream: {applied_at_crash} applied"
    );

    // A new consumer takes over once the dead one's session expires, and finishes the stream.
    let mut process = consumer(&broker);
    until("the first stream", WAIT, || async {
        journal_rows(&db).await >= 1500
    })
    .await;

    // The broker dies under the running consumer while more events arrive.
    let second: Vec<Event> = (0..500).map(|i| feedback_on(&format!("b{i}"))).collect();
    publisher.publish_all(&second[..250]).await.unwrap();
    broker.crash_and_restart();
    Publisher::new(&bus, "test")
        .unwrap()
        .publish_all(&second[250..])
        .await
        .unwrap();
    until("every event", WAIT, || async {
        journal_rows(&db).await >= 2000
    })
    .await;
    // Give a duplicate time to show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    process.crash();

    let rows = Journal::find().all(&db).await.unwrap();
    let distinct: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(rows.len(), 2000, "effects applied");
    assert_eq!(distinct.len(), 2000, "distinct events applied");
    let expected: HashSet<String> = first
        .iter()
        .chain(&second)
        .map(|e| e.header().event_id.to_string())
        .collect();
    assert!(expected.iter().all(|id| distinct.contains(id.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_travels_from_an_event_to_the_events_it_causes() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;
    // The runner's tasks run on other threads: the subscriber must be global (this is the
    // only test of this binary that installs one).
    let provider = quark_runtime::telemetry::tracer_provider("test", "").unwrap();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let world = World::start(TestDb::Sqlite).await;
    let (bus, db) = (world.bus.clone(), world.db.clone());
    let span = tracing::info_span!("user request");
    let trace_id = {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.context().span().span_context().trace_id().to_string()
    };
    Publisher::new(&bus, "test")
        .unwrap()
        .publish(&feedback_on("traced"))
        .instrument(span)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(Arc::new(Scripted::default()), bus.clone(), db).run(shutdown.clone()),
    );
    let input = read_topic(&bus, EventKind::FeedbackReceived.topic(), 1);
    let output = read_topic(&bus, EventKind::RetrainRequested.topic(), 1);
    let trace_of = |m| header(m, "traceparent").map(|t| t.split('-').nth(1).unwrap().to_string());
    assert_eq!(trace_of(&input[0]), Some(trace_id.clone()));
    assert_eq!(
        trace_of(&output[0]),
        Some(trace_id),
        "the caused event continues the trace"
    );
    shutdown.cancel();
    runner.await.unwrap().unwrap();
}

async fn projection_on(kind: TestDb) {
    let world = World::start(kind).await;
    let (bus, db) = (world.bus.clone(), world.db.clone());
    // One learning cycle: feedback → retrain request → model trained, linked by headers.
    let Event::FeedbackReceived(f) = feedback_on("cycle") else {
        unreachable!()
    };
    let mut retrain = sample(EventKind::RetrainRequested, "augmenter");
    let mut trained = sample(EventKind::ModelTrained, "trainer");
    // Each on its own topic: the journal orders them by when they occurred.
    if let Event::RetrainRequested(r) = &mut retrain {
        r.header = EventHeader::caused_by(&f.header, "augmenter", "retrain");
        r.header.occurred_at = Timestamp(f.header.occurred_at.0 + 1000);
    }
    if let (Event::ModelTrained(m), Event::RetrainRequested(r)) = (&mut trained, &retrain) {
        m.header = EventHeader::caused_by(&r.header, "trainer", "model");
        m.header.occurred_at = Timestamp(r.header.occurred_at.0 + 60_000);
    }
    let chain = [Event::from(f.clone()), retrain, trained];
    let publisher = Publisher::new(&bus, "test").unwrap();
    for event in &chain {
        publisher.publish(event).await.unwrap();
        // A duplicate delivery of the same event id must not be recorded twice.
        publisher.publish(event).await.unwrap();
    }
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(
        Runner::new(Arc::new(JournalService), bus.clone(), db.clone()).run(shutdown.clone()),
    );
    until("the cycle", WAIT, || async { journal_rows(&db).await >= 3 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cycle = quark_journal::cycle(&db, &f.header.correlation_id.to_string())
        .await
        .unwrap();
    let types: Vec<&str> = cycle.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["feedback.received", "retrain.requested", "model.trained"]
    );
    assert_eq!(
        cycle[1].causation_id.as_deref(),
        Some(cycle[0].event_id.as_str())
    );
    assert_eq!(
        cycle[2].causation_id.as_deref(),
        Some(cycle[1].event_id.as_str())
    );
    let payload: serde_json::Value = serde_json::from_str(&cycle[0].payload).unwrap();
    assert_eq!(payload["request_id"], "cycle");
    assert_eq!(journal_rows(&db).await, 3);
    shutdown.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_projection_on_sqlite() {
    projection_on(TestDb::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_projection_on_postgres() {
    projection_on(TestDb::Postgres).await;
}

/// Services started together on one PostgreSQL database each migrate it on start: none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_starting_together_migrate_one_postgres_database_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = TestDb::Postgres.url(dir.path()).await;
    let opened =
        futures::future::join_all((0..6).map(|_| quark_runtime::db::open::<quark::Migrator>(&url)))
            .await;
    for db in opened {
        let db = db.expect("every service migrates or finds it migrated");
        assert_eq!(Journal::find().count(&db).await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_augmenter_schedule_asks_the_policy_every_interval_until_shutdown() {
    let world = World::start(TestDb::Sqlite).await;
    let publisher = Publisher::new(&world.bus, quark_augmenter::NAME).unwrap();
    let shutdown = CancellationToken::new();
    let started = Timestamp::now().0;
    let ticker = tokio::spawn(quark_augmenter::schedule(
        publisher,
        Duration::from_millis(400),
        shutdown.clone(),
    ));
    let bus = world.bus.clone();
    let requests = tokio::task::spawn_blocking(move || {
        let mut requests = Vec::new();
        wait_for("three scheduled requests", WAIT, || {
            requests = events_on(&bus, EventKind::RetrainRequested.topic());
            requests.len() >= 3
        });
        requests
    })
    .await
    .unwrap();
    shutdown.cancel();
    ticker.await.unwrap();
    let mut times = Vec::new();
    for event in &requests {
        let Event::RetrainRequested(r) = event else {
            panic!("{event:?}")
        };
        assert!(
            r.is_for_policy() && r.trigger == RetrainTrigger::Schedule,
            "{r:?}"
        );
        times.push(r.header.occurred_at.0);
    }
    times.sort();
    // The first is one interval after the start, not at once; then one per interval.
    assert!(times[0] - started >= 400, "{started} {times:?}");
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 300), "{times:?}");
    // After shutdown, no more.
    let count = events_on(&world.bus, EventKind::RetrainRequested.topic()).len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        events_on(&world.bus, EventKind::RetrainRequested.topic()).len(),
        count
    );
}
