//! Prometheus metrics: one recorder per process, rendered in the text exposition format at
//! `/metrics` (on the gateway's port, and on `telemetry.metrics_listen` in any process).
//! Names follow what operators already query: kafka_exporter's consumer-group lag, vLLM's
//! serving metrics (`quark_` for `vllm:`).

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use quark_events::bus::{BusConfig, BusError, inspect, positions};
use sea_orm::DatabaseConnection;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bounds of the latency histograms (seconds): a millisecond to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's recorder, installed as the global `metrics` recorder on first use: call it
/// at start-up, before anything is recorded.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!("another metrics recorder is installed: /metrics shows none of its metrics");
        }
        handle
    })
}

/// Every metric of the process, in Prometheus' text format.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics`, to merge into any of the process's HTTP servers.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route(
        "/metrics",
        get(|| async { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], render()) }),
    )
}

/// Serves `/metrics` alone on `listener` until `shutdown` (`telemetry.metrics_listen`).
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router::<()>())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// A consumer group and the topics it reads.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    pub topics: Vec<String>,
}

/// Sets `kafka_consumergroup_lag{consumergroup,topic,partition}` of `groups` every `every`
/// until `shutdown`: each partition's end offset less the next offset the group's runner
/// recorded (what `quark topics` reads; the group coordinator is not asked, see `inspect`).
pub async fn export_lag(
    bus: BusConfig,
    db: DatabaseConnection,
    groups: Vec<Group>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = sample_lag(&bus, &db, &groups).await {
            warn!(%error, "cannot read consumer lag");
        }
    }
}

async fn sample_lag(
    bus: &BusConfig,
    db: &DatabaseConnection,
    groups: &[Group],
) -> Result<(), BusError> {
    let states = {
        let bus = bus.clone();
        tokio::task::spawn_blocking(move || inspect(&bus))
            .await
            .unwrap_or_else(|panicked| panic!("reading the topics panicked: {panicked}"))?
    };
    let positions = positions(db).await?;
    for group in groups {
        for state in states.iter().filter(|s| group.topics.contains(&s.topic)) {
            for p in &state.partitions {
                let at = positions
                    .iter()
                    .find(|q| q.0 == group.name && q.1 == state.topic && q.2 == p.partition)
                    .map_or(p.low, |q| q.3);
                let lag = (p.high - at.max(p.low)).max(0);
                metrics::gauge!(
                    "kafka_consumergroup_lag",
                    "consumergroup" => group.name.clone(),
                    "topic" => state.topic.clone(),
                    "partition" => p.partition.to_string(),
                )
                .set(lag as f64);
            }
        }
    }
    Ok(())
}
