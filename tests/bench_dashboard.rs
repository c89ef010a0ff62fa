//! The dashboard under load: events published at a steady rate (default 1,000/s, response.served
//! and feedback.received four to one) for a while, with the page open in headless Chromium.
//! Reports whether the dashboard keeps up — how far its tail is behind what was published, how
//! long its state and a page of messages take to serve, how old each state is when the page has
//! drawn it and how long drawing takes — the process's memory, and the broker's CPU. `bare`
//! publishes the same with no dashboard, for what the dashboard costs the broker.
//!
//!     cargo run -p quark-e2e --bin quark-bench-dashboard -- [events/s] [seconds] [bare]
//!
//! QUARK_BROKER runs another build of the broker.

use quark_dashboard::Dashboard;
use quark_e2e::{TestBroker, bin, feedback_on, open};
use quark_events::bus::{Publisher, ensure_topics};
use quark_events::samples::sample;
use quark_events::{Event, EventKind, Id};
use serde_json::Value;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The publisher sends a batch every tick.
const TICK: Duration = Duration::from_millis(10);
/// Batches awaiting the broker's acknowledgement at once.
const IN_FLIGHT: usize = 100;
const EVERY: Duration = Duration::from_millis(1_000);
const KEEP: usize = 5_000;

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get(((values.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds process `pid` ("self": this one) has used (user and system; the kernel counts
/// in 1/100 s).
fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Publishes `rate` events a second until `until`, counting them into `sent` once
/// acknowledged: responses served by three models, and feedback on them.
async fn publish(publisher: Publisher, rate: u64, until: Instant, sent: Arc<AtomicU64>) {
    let per_tick = (rate as f64 * TICK.as_secs_f64()).round().max(1.0) as usize;
    let models = [Id::random(), Id::random(), Id::random()];
    let mut ticks = tokio::time::interval(TICK);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut n = 0;
    while Instant::now() < until {
        ticks.tick().await;
        let events: Vec<Event> = (0..per_tick)
            .map(|i| {
                n += 1;
                let model = models[n % models.len()];
                match i % 5 {
                    4 => match feedback_on("bench") {
                        Event::FeedbackReceived(mut f) => {
                            f.model_id = model.to_string();
                            f.into()
                        }
                        other => other,
                    },
                    _ => match sample(EventKind::ResponseServed, "bench") {
                        Event::ResponseServed(mut r) => {
                            r.model_id = model;
                            r.into()
                        }
                        other => other,
                    },
                }
            })
            .collect();
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let (publisher, sent) = (publisher.clone(), sent.clone());
        tokio::spawn(async move {
            publisher.publish_all(&events).await.unwrap();
            sent.fetch_add(events.len() as u64, Ordering::Relaxed);
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(IN_FLIGHT as u32).await;
}

/// Reads `/api/state` and a page of messages every second until `until`: the tail's backlog
/// (events sent but not read yet), and how long each answer took.
async fn watch(url: String, until: Instant, sent: Arc<AtomicU64>) -> Value {
    let http = reqwest::Client::new();
    let (mut backlog, mut state_ms, mut page_ms, mut state_kib) = (vec![], vec![], vec![], vec![]);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let published = sent.load(Ordering::Relaxed) as f64;
        let started = Instant::now();
        let body = http
            .get(format!("{url}api/state"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        state_ms.push(started.elapsed().as_secs_f64() * 1e3);
        state_kib.push(body.len() as f64 / 1024.0);
        let state: Value = serde_json::from_slice(&body).unwrap();
        backlog.push(published - state["read"].as_f64().unwrap_or(0.0));
        let started = Instant::now();
        let query = format!("{url}api/messages?type=feedback.received&limit=50");
        http.get(query).send().await.unwrap().bytes().await.unwrap();
        page_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let summary = |v: &mut Vec<f64>| serde_json::json!({"p50": percentile(v, 0.5), "p95": percentile(v, 0.95), "max": percentile(v, 1.0)});
    serde_json::json!({
        "tail_backlog_events": summary(&mut backlog),
        "state_ms": summary(&mut state_ms),
        "state_kib": summary(&mut state_kib),
        "messages_page_ms": summary(&mut page_ms),
    })
}

/// The dashboard and its page while `rate` events a second are published for `seconds`.
async fn with_dashboard(
    broker: &TestBroker,
    rate: u64,
    seconds: u64,
    sent: Arc<AtomicU64>,
) -> Value {
    let bus = broker.bus();
    let dir = tempfile::tempdir().unwrap();
    let db = open::<quark::Migrator>(dir.path(), "quark.db").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let dashboard = Arc::new(Dashboard::new(bus.clone(), db, vec![], EVERY, KEEP));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(quark_dashboard::serve(
        listener,
        dashboard,
        shutdown.clone(),
    ));
    let (rss_before, cpu_before) = (rss_mib(), cpu_s("self"));
    let until = Instant::now() + Duration::from_secs(seconds);
    let publisher = Publisher::new(&bus, "bench").unwrap();
    let publishing = tokio::spawn(publish(publisher, rate, until, sent.clone()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/node/dashboard_load.js");
    let page = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .args([script, &url, &seconds.to_string()])
                .output()
                .expect("node (scripts/bootstrap installs playwright-core; Debian's chromium)")
        })
    };
    let watched = watch(url, until, sent.clone()).await;
    publishing.await.unwrap();
    let page = page.await.unwrap();
    assert!(
        page.status.success(),
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );
    let browser: Value = serde_json::from_slice(&page.stdout).expect("the page's figures");
    shutdown.cancel();
    let _ = served.await;
    serde_json::json!({
        "server": watched,
        "page": browser,
        "rss_mib": {"before": rss_before, "after": rss_mib()},
        "dashboard_and_publisher_cpu_s": cpu_s("self") - cpu_before,
    })
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args
        .next()
        .map_or(1_000, |a| a.parse().expect("events/s: a number"));
    let seconds: u64 = args
        .next()
        .map_or(60, |a| a.parse().expect("seconds: a number"));
    // `bare`: the same publishing with no dashboard, for what the dashboard costs the broker.
    let bare = args.next().as_deref() == Some("bare");
    let _ = bin("quark-broker");
    let broker = TestBroker::start();
    ensure_topics(&broker.bus()).await.unwrap();
    let broker_pid = broker.pid().unwrap().to_string();
    let (broker_before, started) = (cpu_s(&broker_pid), Instant::now());
    let sent = Arc::new(AtomicU64::new(0));
    let measured = match bare {
        true => {
            let until = Instant::now() + Duration::from_secs(seconds);
            let publisher = Publisher::new(&broker.bus(), "bench").unwrap();
            publish(publisher, rate, until, sent.clone()).await;
            Value::Null
        }
        false => with_dashboard(&broker, rate, seconds, sent.clone()).await,
    };
    let wall = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "settings": {"events_per_s": rate, "seconds": seconds, "dashboard": !bare,
                     "refresh_ms": EVERY.as_millis() as u64, "keep_messages_per_topic": KEEP,
                     "partitions": broker.bus().partitions},
        "published_per_s": sent.load(Ordering::Relaxed) as f64 / wall,
        "broker_cpu_share": (cpu_s(&broker_pid) - broker_before) / wall,
        "wall_s": wall,
        "measured": measured,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
