//! `/metrics` scraped by a real Prometheus (Debian's `prometheus`): a gateway (its serving
//! metrics under vLLM's names, beside the process's consumers) and a `quark run journal`
//! process (`telemetry.metrics_listen`). PromQL then reads what the test caused: the lag of a
//! consumer held on its first event, back to 0 once it is let go; the time-to-first-token
//! histogram of the completions asked; the events the journal handled.

use quark_e2e::*;
use quark_events::bus::Publisher;
use quark_events::{Event, EventKind};
use quark_runtime::metrics::{Group, export_lag};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(90);
const FEEDBACK: usize = 7;
const COMPLETIONS: usize = 5;

/// A Prometheus server scraping `targets` (job name, host:port) every half second.
struct Prometheus {
    url: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let jobs: String = targets
            .iter()
            .map(|(job, target)| {
                format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n")
            })
            .collect();
        let config = format!("global:\n  scrape_interval: 500ms\nscrape_configs:\n{jobs}");
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let process = Process(
            std::process::Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={address}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("prometheus (scripts/bootstrap installs Debian's package)"),
        );
        Prometheus {
            url: format!("http://{address}"),
            _process: process,
            _dir: dir,
        }
    }

    /// The value of an instant PromQL query with one result, if it has one yet.
    async fn value(&self, query: &str) -> Option<f64> {
        let url = format!("{}/api/v1/query", self.url);
        let response = reqwest::Client::new()
            .get(url)
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        let result = body["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Waits until `query` reads `expected`.
    async fn until(&self, query: &str, expected: f64) {
        let mut last = None;
        let start = std::time::Instant::now();
        loop {
            last = self.value(query).await.or(last);
            if last == Some(expected) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "{query} read {last:?}, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_reads_lag_serving_latency_and_handled_events() {
    quark_runtime::metrics::handle();
    let cluster = Cluster::start().await;
    let bus = cluster.broker.bus();
    let db = open::<GatewayTables>(cluster.dir.path(), "gateway.db").await;
    let url = cluster.gateway("a", &db, true, None).await;
    let promoted = promotion(&cluster.store, cluster.dir.path()).await;
    let publisher = Publisher::new(&bus, "registry").unwrap();
    publisher.publish(&promoted.clone().into()).await.unwrap();
    cluster.wait_until_serving(&url, promoted.model_id).await;

    // A consumer held on its first event; its lag is exported as kafka_exporter names it.
    let held = Arc::new(Held {
        gate: Semaphore::new(0),
    });
    cluster.consume(held.clone(), &db);
    let group = Group {
        name: "held".into(),
        topics: vec![EventKind::FeedbackReceived.topic().into()],
    };
    let every = Duration::from_millis(200);
    cluster.tasks.spawn(export_lag(
        bus.clone(),
        db.clone(),
        vec![group],
        every,
        cluster.shutdown.clone(),
    ));
    let events: Vec<Event> = (0..FEEDBACK)
        .map(|i| feedback_on(&format!("req-{i}")))
        .collect();
    publisher.publish_all(&events).await.unwrap();

    // A separate service process with its own /metrics.
    let journal_metrics = format!("127.0.0.1:{}", free_port());
    let _journal = Process(
        std::process::Command::new(bin("quark"))
            .args(["run", "journal"])
            .env("QUARK__BUS__BROKERS", &cluster.broker.address)
            .env("QUARK__DATA_DIR", cluster.dir.path().join("journal"))
            .env("QUARK__TELEMETRY__LOG", "error")
            .env("QUARK__TELEMETRY__METRICS_LISTEN", &journal_metrics)
            .spawn()
            .unwrap(),
    );
    let mut generated = 0;
    for i in 0..COMPLETIONS {
        let request = json!({"model": "champion", "prompt": format!("To be {i}"), "max_tokens": 4, "temperature": 0});
        let (status, body) = cluster
            .post(&format!("{url}/v1/completions"), request, None)
            .await;
        assert_eq!(status, 200, "{body}");
        generated += body["usage"]["completion_tokens"].as_u64().unwrap();
    }

    let gateway = url.trim_start_matches("http://");
    let prometheus = Prometheus::start(&[("gateway", gateway), ("journal", &journal_metrics)]);
    prometheus.until("up{job=\"gateway\"}", 1.0).await;
    prometheus.until("up{job=\"journal\"}", 1.0).await;
    prometheus
        .until(
            "sum(kafka_consumergroup_lag{consumergroup=\"held\"})",
            FEEDBACK as f64,
        )
        .await;
    prometheus
        .until(
            "sum(quark_time_to_first_token_seconds_count)",
            COMPLETIONS as f64,
        )
        .await;
    prometheus
        .until(
            "sum(quark_time_to_first_token_seconds_bucket{le=\"+Inf\"})",
            COMPLETIONS as f64,
        )
        .await;
    prometheus
        .until("sum(quark_generation_tokens_total)", generated as f64)
        .await;
    prometheus
        .until(
            "sum(quark_e2e_request_latency_seconds_count)",
            COMPLETIONS as f64,
        )
        .await;
    let first = prometheus
        .value("sum(quark_time_to_first_token_seconds_sum)")
        .await
        .unwrap();
    let whole = prometheus
        .value("sum(quark_e2e_request_latency_seconds_sum)")
        .await
        .unwrap();
    assert!(
        first > 0.0 && first <= whole,
        "first token {first} s, whole requests {whole} s"
    );
    let handled = "sum(quark_events_handled_total{job=\"journal\",consumer=\"journal\",topic=\"feedback.received\"})";
    prometheus.until(handled, FEEDBACK as f64).await;

    // Let the held consumer go: its lag drains to 0.
    held.gate.add_permits(FEEDBACK);
    prometheus
        .until("sum(kafka_consumergroup_lag{consumergroup=\"held\"})", 0.0)
        .await;
    prometheus
        .until(
            "sum(quark_events_handled_total{job=\"gateway\",consumer=\"held\"})",
            FEEDBACK as f64,
        )
        .await;
    cluster.stop().await;
}
