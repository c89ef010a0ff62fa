//! The operators' dashboard in a real browser (Debian's Chromium through playwright-core),
//! against the real broker and database: the page loads with no console errors, shows a held
//! consumer's lag (2, then 4) and the dead letters, follows new events without a reload, and its
//! "Redrive all" (with the API key) sends the letters back once the consumer is fixed, after
//! which the consumer handles each once. Screenshots go to a temporary directory, or to
//! `docs/` with QUARK_SCREENSHOTS=docs.

use quark_dashboard::Dashboard;
use quark_e2e::*;
use quark_events::Event;
use quark_events::bus::{Publisher, dead_letters, ensure_topics};
use quark_events::codec::default_resolver;
use quark_journal::Journal;
use sea_orm::{EntityTrait, PaginatorTrait};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
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
    let dashboard = Arc::new(Dashboard {
        bus: bus.clone(),
        db: db.clone(),
        api_keys: vec!["test-key".into()],
        every: Duration::from_millis(200),
    });
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

    let shots = match std::env::var("QUARK_SCREENSHOTS").as_deref() {
        Ok("docs") => concat!(env!("CARGO_MANIFEST_DIR"), "/../docs").into(),
        _ => cluster.dir.path().display().to_string(),
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/node/dashboard.js");
    let mut browser = Process(
        Command::new("node")
            .args([script, &url, &shots])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (scripts/bootstrap installs playwright-core; Debian's chromium)"),
    );
    let mut said = BufReader::new(browser.0.stdout.take().unwrap()).lines();
    let mut hear = move |word: &str| {
        let line = said
            .next()
            .expect("the browser script ended early")
            .unwrap();
        assert_eq!(line, word);
    };
    tokio::task::block_in_place(|| hear("READY"));
    publish(&publisher, 3, 5).await;
    tokio::task::block_in_place(|| hear("LIVE"));
    mending.broken.store(false, Ordering::SeqCst);
    writeln!(browser.0.stdin.as_mut().unwrap(), "FIXED").unwrap();
    tokio::task::block_in_place(|| hear("DONE"));
    assert!(browser.0.wait().unwrap().success());

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
