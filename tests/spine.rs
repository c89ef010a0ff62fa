//! The spine under what breaks it: standard third-party Kafka clients (aiokafka with and
//! without idempotence, kafka-python, confluent-kafka, KafkaJS) against the embedded broker, a handler
//! that runs far longer than the consumer's poll interval, and a broker that dies or stops
//! answering under `quark up`'s supervisor.

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quark::broker::EmbeddedBroker;
use quark_e2e::*;
use quark_events::bus::{BusConfig, Handler, HandlerError, Publisher, Runner, ensure_topics};
use quark_events::samples::sample;
use quark_events::{Event, EventHeader, EventKind, RetrainRequested, RetrainTrigger, RunKind};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// Records the event ids it handles, how often, and whether a job was running when the next
/// one started; each job blocks its thread for `job` (as training does) and emits one event.
struct Recorder {
    name: &'static str,
    job: Duration,
    handled: Mutex<HashMap<String, u32>>,
}

impl Recorder {
    fn new(name: &'static str, job: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            name,
            job,
            handled: Mutex::default(),
        })
    }

    fn handled(&self) -> HashMap<String, u32> {
        self.handled.lock().unwrap().clone()
    }
}

#[async_trait]
impl Handler for Recorder {
    fn name(&self) -> &str {
        self.name
    }
    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::FeedbackReceived]
    }
    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        let Event::FeedbackReceived(feedback) = event else {
            unreachable!("subscribed to feedback only")
        };
        tokio::task::block_in_place(|| std::thread::sleep(self.job));
        *self
            .handled
            .lock()
            .unwrap()
            .entry(feedback.header.event_id.to_string())
            .or_default() += 1;
        Ok(vec![Event::from(RetrainRequested {
            header: EventHeader::caused_by(&feedback.header, self.name, "retrain"),
            request_id: quark_events::Id::derived(feedback.header.event_id, "request"),
            run_kind: RunKind::Sft,
            base_model_id: None,
            dataset_ids: vec![],
            trigger: RetrainTrigger::FeedbackThreshold,
            reason: "recorded".into(),
        })])
    }
}

fn feedback() -> Event {
    let Event::FeedbackReceived(mut f) = sample(EventKind::FeedbackReceived, "spine") else {
        unreachable!()
    };
    f.header = EventHeader::root("spine");
    f.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_clients_work_and_quark_goes_on_with_nothing_lost() {
    let broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    let clients = [
        "aiokafka-idempotent",
        "aiokafka",
        "kafka-python",
        "confluent-kafka",
    ];
    let published = tokio::task::spawn_blocking({
        let address = broker.address.clone();
        move || python_clients(&address, 5, false, &clients)
    })
    .await
    .unwrap();

    let node_events: Vec<Event> = (0..3).map(|_| feedback()).collect();
    tokio::task::spawn_blocking({
        let (address, events) = (broker.address.clone(), node_events.clone());
        move || kafkajs(&address, &events)
    })
    .await
    .unwrap();
    let from_node = node_events.iter().map(|e| e.header().event_id.to_string());

    // The broker still serves Quark: a Quark consumer handles every third-party event and
    // one of Quark's own, published after the clients.
    let own = feedback();
    Publisher::new(&bus, "spine")
        .unwrap()
        .publish(&own)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::Sqlite.open(dir.path()).await;
    let recorder = Recorder::new("clients", Duration::ZERO);
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(recorder.clone(), bus.clone(), db).run(shutdown.clone()));
    let expected: BTreeSet<String> = published
        .into_iter()
        .chain(from_node)
        .chain([own.header().event_id.to_string()])
        .collect();
    until("every event handled", WAIT, || {
        let handled: BTreeSet<String> = recorder.handled().into_keys().collect();
        let done = handled == expected;
        async move { done }
    })
    .await;
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    assert!(
        recorder.handled().values().all(|n| *n == 1),
        "each event handled once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_poll_interval_is_neither_evicted_nor_redelivered() {
    capture::install();
    let broker = TestBroker::start();
    let mut bus = BusConfig {
        session_timeout_ms: 2000,
        max_poll_interval_ms: 2000,
        ..broker.bus()
    };
    // Heartbeats well inside the session (librdkafka's default, 3 s, is longer than it).
    bus.properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    ensure_topics(&bus).await.unwrap();
    let publisher = Publisher::new(&bus, "spine").unwrap();
    let (first, second) = (feedback(), feedback());
    publisher.publish(&first).await.unwrap();
    publisher.publish(&second).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::Sqlite.open(dir.path()).await;
    // Each job takes three poll intervals.
    let recorder = Recorder::new("long-jobs", Duration::from_secs(6));
    let shutdown = CancellationToken::new();
    let runner =
        tokio::spawn(Runner::new(recorder.clone(), bus.clone(), db.clone()).run(shutdown.clone()));
    // The runner's own record of its position (asking the group coordinator from a second
    // client would disturb the group on Tansu).
    until("both events processed", WAIT, || {
        let db = db.clone();
        async move {
            let positions = quark_events::bus::positions(&db).await.unwrap();
            positions.iter().map(|(_, _, _, next)| next).sum::<i64>() == 2
        }
    })
    .await;
    // An evicted consumer logs its partitions revoked (librdkafka leaves the group when
    // max.poll.interval.ms passes without a poll); this one was assigned once and kept them.
    let group_changes = capture::lines_of("long-jobs");
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    assert_eq!(
        group_changes
            .iter()
            .filter(|l| *l == "partitions revoked")
            .count(),
        0,
        "{group_changes:?}"
    );
    assert_eq!(
        group_changes
            .iter()
            .filter(|l| *l == "partitions assigned")
            .count(),
        1,
        "{group_changes:?}"
    );
    assert!(
        group_changes
            .iter()
            .any(|l| l.starts_with("long job: pausing")),
        "{group_changes:?}"
    );
    let handled = recorder.handled();
    for event in [&first, &second] {
        assert_eq!(
            handled[&event.header().event_id.to_string()],
            1,
            "handled once"
        );
    }
    let retrains = events_on(&bus, EventKind::RetrainRequested.topic());
    assert_eq!(retrains.len(), 2, "one retrain per job: {retrains:?}");
}

/// Log lines of the consumer runner, by consumer: what a group member says about its
/// partitions. A global subscriber, since librdkafka calls back on its own threads.
mod capture {
    use std::sync::{Mutex, Once};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();

    #[derive(Default)]
    struct Line {
        consumer: String,
        message: String,
    }

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "consumer" => self.consumer = format!("{value:?}"),
                _ => {}
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "message" => self.message = value.to_string(),
                "consumer" => self.consumer = value.to_string(),
                _ => {}
            }
        }
    }

    struct Capture;

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target().starts_with("quark_events") {
                let mut line = Line::default();
                event.record(&mut line);
                LINES.lock().unwrap().push((line.consumer, line.message));
            }
        }
    }

    pub fn install() {
        INSTALL.call_once(|| {
            let _ = tracing_subscriber::registry().with(Capture).try_init();
        });
    }

    pub fn lines_of(consumer: &str) -> Vec<String> {
        let lines = LINES.lock().unwrap();
        lines
            .iter()
            .filter(|(c, _)| c == consumer)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

fn settings(dir: &std::path::Path, listen: &str) -> quark_runtime::Settings {
    quark_runtime::Settings {
        data_dir: dir.to_path_buf(),
        broker: quark_runtime::config::BrokerSettings {
            listen: listen.to_string(),
            command: bin("quark-broker").display().to_string(),
            health_interval_ms: 200,
            health_failures: 3,
            partitions: 1,
        },
        ..Default::default()
    }
}

async fn next_pid(pid: &mut tokio::sync::watch::Receiver<Option<u32>>) -> u32 {
    tokio::time::timeout(Duration::from_secs(20), pid.changed())
        .await
        .expect("restarted within 20 s")
        .unwrap();
    pid.borrow().expect("a running broker has a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_a_broker_that_dies_or_stops_answering() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let broker = EmbeddedBroker::from_settings(&settings(dir.path(), &address)).unwrap();
    let stop = CancellationToken::new();
    let mut supervised = broker.start(stop.clone()).await.unwrap();
    let bus = BusConfig::with_brokers(&address);
    ensure_topics(&bus).await.unwrap();
    let publisher = Publisher::new(&bus, "spine").unwrap();
    let before = feedback();
    publisher.publish(&before).await.unwrap();

    // Alive but silent: a stopped process keeps its port and answers nothing.
    let first = supervised.pid.borrow().unwrap();
    kill(Pid::from_raw(first as i32), Signal::SIGSTOP).unwrap();
    let second = next_pid(&mut supervised.pid).await;
    assert_ne!(second, first);

    // Dead.
    kill(Pid::from_raw(second as i32), Signal::SIGKILL).unwrap();
    let third = next_pid(&mut supervised.pid).await;
    assert_ne!(third, second);

    let after = feedback();
    publisher.publish(&after).await.unwrap();
    let ids = |events: &[Event]| -> BTreeSet<String> {
        events
            .iter()
            .map(|e| e.header().event_id.to_string())
            .collect()
    };
    let events = events_on(&bus, EventKind::FeedbackReceived.topic());
    assert_eq!(events.len(), 2, "nothing duplicated: {events:?}");
    assert_eq!(
        ids(&events),
        ids(&[before, after]),
        "nothing lost across restarts"
    );
    let log = std::fs::read_to_string(dir.path().join("logs/broker.log")).unwrap();
    assert_eq!(
        log.matches("ready in").count(),
        3,
        "three starts logged: {log}"
    );

    stop.cancel();
    supervised.task.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "stopped on shutdown"
    );
}

/// The first committed version of `schemas/<topic>.avsc`, from git history.
fn first_committed_schema(topic: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let path = format!("schemas/{topic}.avsc");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let commits = git(&["log", "--reverse", "--format=%H", "--", &path]);
    let first = commits.lines().next().expect("the schema is committed");
    git(&["show", &format!("{first}:{path}")])
}

/// `event` as a producer built against `writer` sends it: single-object framing.
fn written_with(writer: &apache_avro::Schema, event: &Event) -> Vec<u8> {
    let Event::ModelPromoted(promoted) = event else {
        unreachable!()
    };
    let value = apache_avro::to_value(promoted)
        .unwrap()
        .resolve(writer)
        .unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&quark_events::fingerprint::fingerprint(writer));
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(writer)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    bytes.extend(datum);
    bytes
}

fn replay_settings(dir: &std::path::Path, bus: &BusConfig) -> quark_runtime::Settings {
    quark_runtime::Settings {
        data_dir: dir.to_path_buf(),
        bus: bus.clone(),
        database: quark_runtime::config::DatabaseSettings {
            url: format!("sqlite://{}?mode=rwc", dir.join("quark.db").display()),
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_log_holding_two_schema_versions_rebuilds_everything() {
    let broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    let kind = EventKind::ModelPromoted;
    let v1_text = first_committed_schema(kind.topic());
    let v1 = apache_avro::Schema::parse_str(&v1_text).unwrap();
    assert_ne!(
        quark_events::fingerprint::fingerprint(&v1),
        kind.fingerprint(),
        "the schema has evolved since its first version"
    );
    let (mut old, new) = (sample(kind, "written with v1"), sample(kind, "written now"));
    // v1 knows the built-in aliases only.
    if let Event::ModelPromoted(p) = &mut old {
        (p.alias, p.alias_name) = (quark_events::Alias::Champion, None);
    }
    let publisher = Publisher::new(&bus, "spine").unwrap();
    let key = old.header().correlation_id.to_string();
    let headers = rdkafka::message::OwnedHeaders::new();
    publisher
        .send(
            kind.topic(),
            Some(key.as_bytes()),
            &written_with(&v1, &old),
            headers,
        )
        .await
        .unwrap();
    publisher.publish(&new).await.unwrap();

    // A registry that never saw v1 cannot read the old event: replay refuses and says why,
    // or, told to, rebuilds without it and counts it.
    let unknown = tempfile::tempdir().unwrap();
    let settings = replay_settings(unknown.path(), &bus);
    let refused = quark::commands::replay::replay(&settings, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("1 message(s) do not decode"), "{refused}");
    assert!(
        refused.contains("model.promoted: 1 unknown_fingerprint"),
        "{refused}"
    );
    let partial = quark::commands::replay::replay(&settings, true)
        .await
        .unwrap();
    assert_eq!((partial.folded, partial.skipped.len()), (1, 1));

    // The registry that registered v1 when it was current, then the evolved schema.
    let known = tempfile::tempdir().unwrap();
    let settings = replay_settings(known.path(), &bus);
    let db = quark_runtime::db::open::<quark::Migrator>(&settings.database_url())
        .await
        .unwrap();
    let store = quark_schema_registry::Store::open(db.clone())
        .await
        .unwrap();
    store
        .register(&quark_schema_registry::subject_of(kind), &v1_text)
        .await
        .unwrap();
    quark_schema_registry::preregister(&store).await.unwrap();
    let replayed = quark::commands::replay::replay(&settings, false)
        .await
        .unwrap();
    assert_eq!((replayed.folded, replayed.skipped.len()), (2, 0));
    let promoted: BTreeSet<String> = quark_registry::promotions(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.model_id)
        .collect();
    let expected: BTreeSet<String> = [&old, &new]
        .iter()
        .map(|e| match e {
            Event::ModelPromoted(p) => p.model_id.to_string(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        promoted, expected,
        "both versions' promotions are in the registry"
    );
}
