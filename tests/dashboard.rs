//! The operators' dashboard in a real browser (Debian's Chromium through playwright-core),
//! against the real broker, database, registry and schema registry:
//! - the page loads with no console errors, shows a held consumer's lag (2, then 4) and the
//!   dead letters, follows new events without a reload, and its "Redrive all" (with the API
//!   key) sends the letters back once the consumer is fixed, after which the consumer handles
//!   each once;
//! - its pages show the champion, a training job's progress and loss, the models' timeline
//!   with the gate's checks and the aliases at an earlier moment, serving by model and route,
//!   messages in both framings and one cycle's causal chain, and the registry's subjects; its
//!   "Retrain now" asks the improvement policy and "Roll the champion back" goes through the
//!   registry, both with who and why.
//!
//! Screenshots go to a temporary directory, or to `docs/` with QUARK_SCREENSHOTS=docs.

use quark_dashboard::Dashboard;
use quark_e2e::*;
use quark_events::bus::{Publisher, dead_letters, ensure_topics};
use quark_events::codec::default_resolver;
use quark_events::samples::sample;
use quark_events::{
    Alias, Event, EventHeader, EventKind, Id, PromotionReason, RetrainTrigger, SchemaResolver,
};
use quark_journal::Journal;
use quark_registry::{RegistryService, alias_of};
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(90);

async fn publish(publisher: &Publisher, from: usize, to: usize) {
    let events: Vec<Event> = (from..to)
        .map(|i| feedback_on(&format!("req-{i}")))
        .collect();
    publisher.publish_all(&events).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_the_loop_live_and_redrives_dead_letters() {
    let cluster = Cluster::start().await;
    let bus = cluster.broker.bus();
    ensure_topics(&bus).await.unwrap();
    let db = open::<quark::Migrator>(cluster.dir.path(), "quark.db").await;
    // It takes the first event (a consumer shows once it has processed one) and holds the next.
    let held = Arc::new(Held {
        gate: Semaphore::new(1),
    });
    let mending = Arc::new(Mending {
        broken: AtomicBool::new(true),
    });
    cluster.consume(held.clone(), &db);
    cluster.consume(mending.clone(), &db);
    let publisher = Publisher::new(&bus, "test").unwrap();
    publish(&publisher, 0, 3).await;
    let letters = || {
        let bus = bus.clone();
        async move {
            let read = tokio::task::spawn_blocking(move || {
                dead_letters(&bus, default_resolver().as_ref())
            });
            read.await.unwrap().unwrap().len()
        }
    };
    until("three dead letters", WAIT, || async {
        letters().await == 3
    })
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let dashboard = Arc::new(Dashboard::new(
        bus.clone(),
        db.clone(),
        vec!["test-key".into()],
        Duration::from_millis(200),
        1_000,
    ));
    cluster.tasks.spawn(quark_dashboard::serve(
        listener,
        dashboard,
        cluster.shutdown.clone(),
    ));
    // An action without the key is refused in the API's error shape.
    let refused = reqwest::Client::new()
        .post(format!("{url}api/dead-letters/redrive"))
        .json(&serde_json::json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key")
    );

    let shots = screenshots(cluster.dir.path());
    let mut browser = BrowserScript::start("dashboard.js", &[&url, &shots]);
    let said = tokio::task::block_in_place(|| browser.hear());
    assert_eq!(said, "READY");
    publish(&publisher, 3, 5).await;
    assert_eq!(tokio::task::block_in_place(|| browser.hear()), "LIVE");
    mending.broken.store(false, Ordering::SeqCst);
    browser.tell("FIXED");
    assert_eq!(tokio::task::block_in_place(|| browser.hear()), "DONE");
    tokio::task::block_in_place(|| browser.finish());

    // The redriven letters were handled once each by the fixed consumer.
    until("the letters handled", WAIT, || async {
        Journal::find().count(&db).await.unwrap() == 5
    })
    .await;
    let screenshot = std::fs::read(format!("{shots}/dashboard.png")).unwrap();
    assert_eq!(&screenshot[1..4], b"PNG");
    held.gate.add_permits(5);
    cluster.stop().await;
}

/// A model through the gate with `perplexity` among its evaluation's metrics.
fn measured((model, mut events): (Id, [Event; 2]), perplexity: f64) -> (Id, [Event; 2]) {
    if let Event::EvalCompleted(e) = &mut events[1] {
        e.metrics.insert("perplexity".into(), perplexity);
    }
    (model, events)
}

/// Publishes a model's training, then (once the registry knows it) its evaluation, and waits
/// for it to be champion.
async fn promote(publisher: &Publisher, db: &DatabaseConnection, model: Id, events: &[Event; 2]) {
    publisher.publish(&events[0]).await.unwrap();
    until("the challenger", WAIT, || async {
        alias_of(db, Alias::Challenger).await.unwrap() == Some(model)
    })
    .await;
    publisher.publish(&events[1]).await.unwrap();
    until("the champion", WAIT, || async {
        alias_of(db, Alias::Champion).await.unwrap() == Some(model)
    })
    .await;
}

/// A job's progress report at `step` of 100.
fn progressed(job: &EventHeader, step: i64, loss: f64) -> Event {
    let Event::TrainingProgressed(mut p) = sample(EventKind::TrainingProgressed, "trainer") else {
        unreachable!()
    };
    p.header = EventHeader::caused_by(job, "trainer", &format!("progress/{step}"));
    p.job_id = job.event_id;
    (p.step, p.max_steps, p.loss) = (step, 100, Some(loss));
    p.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_models_jobs_serving_messages_and_schemas_and_rolls_back() {
    let cluster = Cluster::start().await;
    let bus = cluster.broker.bus();
    let db = open::<quark::Migrator>(cluster.dir.path(), "quark.db").await;
    let registry = RegistryService::new(db.clone(), quark_runtime::Settings::default().registry);
    cluster.consume(Arc::new(registry), &db);
    // The embedded schema registry: the page lists its subjects, and served responses are
    // written in Confluent framing under its ids (the rest in single-object framing).
    let schemas = quark_schema_registry::Store::open(db.clone())
        .await
        .unwrap();
    quark_schema_registry::preregister(&schemas).await.unwrap();
    let resolver: Arc<dyn SchemaResolver> = Arc::new(schemas.resolver());
    let registry_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", registry_listener.local_addr().unwrap());
    cluster.tasks.spawn(quark_schema_registry::serve(
        registry_listener,
        schemas,
        quark_schema_registry::ApiKeys::new([KEY]),
        cluster.shutdown.clone(),
    ));
    let publisher = Publisher::new(&bus, "test").unwrap();
    let (a, first) = measured(through_the_gate(), 14.2);
    promote(&publisher, &db, a, &first).await;
    // Made now, so that its events come after the first's.
    let (b, second) = measured(through_the_gate(), 13.9);
    promote(&publisher, &db, b, &second).await;
    let job = EventHeader::root("test");
    let progress = [progressed(&job, 10, 3.2), progressed(&job, 40, 2.6)];
    publisher.publish_all(&progress).await.unwrap();
    let served: Vec<Event> = (0..3)
        .map(|i| {
            let Event::ResponseServed(mut r) = sample(EventKind::ResponseServed, "gateway") else {
                unreachable!()
            };
            (r.model_id, r.latency_ms) = (b, 40.0 + f64::from(i));
            r.into()
        })
        .collect();
    let confluent = Publisher::new(&bus, "test")
        .unwrap()
        .with_registry(resolver.clone());
    confluent.publish_all(&served).await.unwrap();
    publisher.publish(&feedback_on("req-1")).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let dashboard = Dashboard::new(
        bus.clone(),
        db.clone(),
        vec!["test-key".into()],
        Duration::from_millis(200),
        1_000,
    )
    .with_schema_registry(&registry_url)
    .with_resolver(resolver);
    cluster.tasks.spawn(quark_dashboard::serve(
        listener,
        Arc::new(dashboard),
        cluster.shutdown.clone(),
    ));
    refusals(&cluster, &url).await;
    until("the served responses held", WAIT, || async {
        messages(&cluster, &url, "type=response.served").await.len() == 3
    })
    .await;
    // Both framings decode to the same JSON shape.
    for m in messages(&cluster, &url, "type=response.served").await {
        assert_eq!(m["framing"], "confluent", "{m}");
        assert_eq!(m["event"]["model_id"], b.to_string().as_str(), "{m}");
    }
    let trained = messages(&cluster, &url, "type=model.trained").await;
    assert_eq!(trained.len(), 2);
    assert!(trained.iter().all(|m| m["framing"] == "single-object"));
    // One cycle's chain, oldest first: the model trained, its evaluation and the registry's
    // moves, each after its cause.
    let query = format!("correlation={}&order=asc", first[0].header().correlation_id);
    let types = |chain: &[serde_json::Value]| -> Vec<String> {
        chain
            .iter()
            .map(|m| m["event_type"].as_str().unwrap().to_string())
            .collect()
    };
    until("the first cycle's chain held", WAIT, || async {
        let held = types(&messages(&cluster, &url, &query).await);
        held.contains(&"eval.completed".into()) && held.contains(&"model.promoted".into())
    })
    .await;
    let chain = messages(&cluster, &url, &query).await;
    let header = |m: &serde_json::Value| m["event"]["header"].clone();
    assert_eq!(types(&chain)[0], "model.trained");
    for (i, m) in chain.iter().enumerate() {
        let cause = &header(m)["causation_id"];
        let found = chain.iter().position(|c| &header(c)["event_id"] == cause);
        assert!(found.is_none_or(|at| at < i), "{chain:?}");
    }

    let shots = screenshots(cluster.dir.path());
    let (a_id, b_id) = (a.to_string(), b.to_string());
    tokio::task::block_in_place(|| {
        let mut browser = BrowserScript::start("dashboard_pages.js", &[&url, &shots, &a_id, &b_id]);
        assert_eq!(browser.hear(), "DONE");
        browser.finish();
    });
    // The page's retraining request went to the improvement policy, with who and why.
    let retrain = events_on(&bus, EventKind::RetrainRequested.topic());
    assert!(
        matches!(&retrain[..], [Event::RetrainRequested(r)]
            if r.trigger == RetrainTrigger::Manual
                && r.header.producer == "quark-dashboard"
                && r.reason == "dashboard: the answers drifted"
                && r.is_for_policy()),
        "{retrain:?}"
    );
    // The page's rollback went through the registry, with who and why.
    until("a champion again", WAIT, || async {
        alias_of(&db, Alias::Champion).await.unwrap() == Some(a)
    })
    .await;
    let moves = events_on(&bus, EventKind::ModelPromoted.topic());
    let rollback = moves
        .iter()
        .find_map(|e| match e {
            Event::ModelPromoted(p) if p.reason == PromotionReason::Rollback => Some(p),
            _ => None,
        })
        .expect("a rollback");
    assert_eq!(
        (rollback.operator.as_deref(), rollback.note.as_deref()),
        (Some("dashboard"), Some("b answers worse"))
    );
    cluster.stop().await;
}

/// The messages the dashboard at `url` holds that `query` selects.
async fn messages(cluster: &Cluster, url: &str, query: &str) -> Vec<serde_json::Value> {
    let page = cluster.get(&format!("{url}api/messages?{query}")).await;
    page["messages"].as_array().unwrap().clone()
}

/// Bad requests get a 4xx in the API's error shape, and actions need the key.
async fn refusals(cluster: &Cluster, url: &str) {
    let bad = cluster
        .http
        .get(format!("{url}api/messages?limit=many"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
    let move_url = format!("{url}api/models/move");
    let (status, body) = cluster
        .post(&move_url, serde_json::json!({"action": "rollback"}), None)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = cluster
        .post(
            &move_url,
            serde_json::json!({"action": "promote"}),
            Some("test-key"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model_id")
    );
    let (status, _) = cluster
        .post(
            &move_url,
            serde_json::json!({"action": "sideways"}),
            Some("test-key"),
        )
        .await;
    assert_eq!(status, 400);
}
