//! Confluent's own Python clients (`confluent-kafka`'s AvroSerializer, AvroDeserializer and
//! SchemaRegistryClient) against Quark's schema registry, a real broker and a real consumer
//! runner: tests/python/schema_registry_clients.py.

use async_trait::async_trait;
use quark_e2e::*;
use quark_events::bus::{Handler, HandlerError, Publisher, Runner, ensure_topics};
use quark_events::samples::sample;
use quark_events::{Event, EventKind, SchemaResolver};
use quark_schema_registry::store::VersionSpec;
use quark_schema_registry::{ApiKeys, Store, preregister, serve, subject_of};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// Records every event it is given.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Event>>,
}

#[async_trait]
impl Handler for Recorder {
    fn name(&self) -> &str {
        "python-interop"
    }
    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::FeedbackReceived]
    }
    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        self.seen.lock().unwrap().push(event.clone());
        Ok(vec![])
    }
}

/// Runs the script in `mode`; returns the JSON objects it printed, one per line.
async fn python(args: Vec<String>) -> Vec<Value> {
    tokio::task::spawn_blocking(move || {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/schema_registry_clients.py"
        );
        let python = std::env::var("QUARK_PYTHON").expect("QUARK_PYTHON (scripts/env)");
        let out = std::process::Command::new(python)
            .arg(script)
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    })
    .await
    .unwrap()
}

async fn registered_id(store: &Store, kind: EventKind) -> u64 {
    let subject = subject_of(kind);
    let latest = store.version(&subject, VersionSpec::Latest).await;
    latest.unwrap().id as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_clients_work_with_quarks_registry_and_runner() {
    let broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::Sqlite.open(dir.path()).await;
    let store = Store::open(db.clone()).await.unwrap();
    preregister(&store).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let keys = ApiKeys::new([KEY]);
    let server = tokio::spawn(serve(listener, store.clone(), keys, shutdown.clone()));
    // Registering needs the key: Confluent's clients take it in the URL (HTTP Basic).
    let writer_url = url.replace("http://", &format!("http://quark:{KEY}@"));
    let resolver: Arc<dyn SchemaResolver> = Arc::new(store.resolver());
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/feedback.received.avsc"
    );

    // A Python AvroSerializer publishes; a Quark runner decodes and handles it.
    let handler = Arc::new(Recorder::default());
    let runner =
        Runner::new(handler.clone(), bus.clone(), db.clone()).with_resolver(resolver.clone());
    let runner = tokio::spawn(runner.run(shutdown.clone()));
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let produced = python(args(&["produce", &broker.address, &writer_url, schema])).await;
    let feedback_id = registered_id(&store, EventKind::FeedbackReceived).await;
    assert_eq!(produced[0]["magic"], 0, "Confluent framing");
    assert_eq!(
        produced[0]["schema_id"], feedback_id,
        "the pre-registered id"
    );
    let event_id = produced[0]["event_id"].as_str().unwrap().to_string();
    until("the runner to handle the Python event", WAIT, || async {
        handler
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.header().event_id.to_string() == event_id)
    })
    .await;
    let Event::FeedbackReceived(feedback) = handler.seen.lock().unwrap()[0].clone() else {
        panic!("a feedback event")
    };
    assert_eq!(feedback.header.producer, "python-confluent-kafka");
    assert_eq!(feedback.correction.as_deref(), Some("Paris."));
    assert_eq!(feedback.labels, ["task:qa"]);

    // Quark's publisher writes Confluent framing; a Python AvroDeserializer reads it.
    let publisher = Publisher::new(&bus, "test")
        .unwrap()
        .with_registry(resolver.clone());
    let promoted = sample(EventKind::ModelPromoted, "for python");
    publisher.publish(&promoted).await.unwrap();
    let read = python(args(&[
        "consume",
        &broker.address,
        &url,
        "model.promoted",
        "1",
    ]))
    .await;
    let promoted_id = registered_id(&store, EventKind::ModelPromoted).await;
    assert_eq!(read[0]["schema_id"], promoted_id);
    let value = &read[0]["value"];
    assert_eq!(
        value["header"]["event_id"],
        promoted.header().event_id.to_string()
    );
    assert_eq!(value["header"]["producer"], promoted.header().producer);

    // The Python client's registration of an incompatible schema is refused with 409.
    let subject = subject_of(EventKind::FeedbackReceived);
    let refused = python(args(&["incompatible", &writer_url, &subject, schema])).await;
    assert_eq!(
        refused[0],
        serde_json::json!({"status": 409, "error_code": 409})
    );
    // Without the key, the same client is refused before anything is checked.
    let unauthorised = python(args(&["incompatible", &url, &subject, schema])).await;
    assert_eq!(
        unauthorised[0],
        serde_json::json!({"status": 401, "error_code": 40101})
    );
    assert_eq!(store.versions(&subject).await.unwrap(), [1]);

    shutdown.cancel();
    runner.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_keeps_its_versions_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::Postgres.open(dir.path()).await;
    let store = Store::open(db.clone()).await.unwrap();
    preregister(&store).await.unwrap();
    let subject = subject_of(EventKind::FeedbackReceived);
    let mut older: Value = serde_json::from_str(EventKind::FeedbackReceived.schema_text()).unwrap();
    older["fields"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["name"] != "labels");
    let older_id = store.register(&subject, &older.to_string()).await.unwrap();
    store
        .set_level(
            Some(&subject),
            quark_schema_registry::CompatibilityLevel::Full,
        )
        .await
        .unwrap();

    let reopened = Store::open(db).await.unwrap();
    preregister(&reopened).await.unwrap();
    assert_eq!(reopened.versions(&subject).await.unwrap(), [1, 2]);
    let latest = reopened
        .version(&subject, VersionSpec::Latest)
        .await
        .unwrap();
    assert_eq!(latest.id, older_id);
    assert_eq!(
        reopened.level(Some(&subject)).await.unwrap(),
        quark_schema_registry::CompatibilityLevel::Full
    );
    let resolver = reopened.resolver();
    assert!(
        resolver.schema(older_id as u32).is_some(),
        "the cache is filled at open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_decodes_a_version_registered_after_it_started() {
    let broker = TestBroker::start();
    let bus = broker.bus();
    ensure_topics(&bus).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::Sqlite.open(dir.path()).await;
    let store = Store::open(db.clone()).await.unwrap();
    preregister(&store).await.unwrap();
    let handler = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let runner = Runner::new(handler.clone(), bus.clone(), db.clone())
        .with_resolver(Arc::new(store.resolver()))
        .run(shutdown.clone());
    let runner = tokio::spawn(runner);

    // Another process on the same database registers an older version: without `labels`,
    // the schema's last field (its default is []).
    let elsewhere = Store::open(db.clone()).await.unwrap();
    let kind = EventKind::FeedbackReceived;
    let mut older: Value = serde_json::from_str(kind.schema_text()).unwrap();
    let fields = older["fields"].as_array_mut().unwrap();
    assert_eq!(fields.pop().unwrap()["name"], "labels");
    let id = elsewhere
        .register(&subject_of(kind), &older.to_string())
        .await
        .unwrap();
    let writer = elsewhere.resolver().schema(id as u32).unwrap();
    let events: Vec<Event> = (0..2)
        .map(|i| {
            let Event::FeedbackReceived(mut e) = sample(kind, &format!("older-{i}")) else {
                unreachable!()
            };
            e.labels.clear();
            e.into()
        })
        .collect();
    // An empty array is a single 0 byte at the end of the datum: without it, the older datum.
    let datum = |event: &Event| {
        let mut bytes = quark_events::encode(event).unwrap()[10..].to_vec();
        assert_eq!(bytes.pop(), Some(0));
        bytes
    };
    let fingerprint = quark_events::fingerprint::fingerprint(&writer);
    let messages = [
        [&[0xC3, 0x01][..], &fingerprint, &datum(&events[0])].concat(),
        [&[0][..], &(id as u32).to_be_bytes(), &datum(&events[1])].concat(),
    ];
    let publisher = Publisher::new(&bus, "test").unwrap();
    for bytes in &messages {
        let headers = rdkafka::message::OwnedHeaders::new();
        publisher
            .send(kind.topic(), None, bytes, headers)
            .await
            .unwrap();
    }
    until("the runner to handle both older events", WAIT, || async {
        handler.seen.lock().unwrap().len() == 2
    })
    .await;
    let mut seen = handler.seen.lock().unwrap().clone();
    seen.sort_by_key(|e| e.header().producer.clone());
    assert_eq!(seen, events);
    shutdown.cancel();
    runner.await.unwrap().unwrap();
}
