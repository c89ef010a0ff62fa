//! `quark up` and `quark run <service>`: run services until shutdown.

use crate::Migrator;
use crate::broker::EmbeddedBroker;
use crate::services::Service;
use anyhow::{Context, bail};
use quark_events::bus::{Runner, ensure_topics};
use quark_runtime::{Settings, db};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

/// `quark up`: the embedded broker (unless `bus.brokers` names a cluster), the database and
/// every service, until `shutdown`.
pub async fn up(mut settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let broker_stopped = CancellationToken::new();
    let broker = if settings.uses_embedded_broker() {
        let broker = EmbeddedBroker::from_settings(&settings)?;
        settings.bus.brokers = broker.address().to_string();
        Some(broker.start(broker_stopped.clone()).await?)
    } else {
        None
    };
    let result = run(&settings, Service::ALL, shutdown).await;
    broker_stopped.cancel();
    if let Some(broker) = broker {
        let _ = broker.await;
    }
    result
}

/// Runs `services` against the configured cluster until `shutdown`.
pub async fn run(
    settings: &Settings,
    services: &[Service],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if settings.uses_embedded_broker() {
        bail!(
            "bus.brokers is empty: start everything with `quark up`, or set QUARK__BUS__BROKERS to a Kafka cluster"
        );
    }
    ensure_topics(&settings.bus)
        .await
        .context("cannot create the topics")?;
    let database = db::open::<Migrator>(&settings.database_url())
        .await
        .context("cannot open the database")?;
    let tracker = TaskTracker::new();
    for service in services {
        let runner = Runner::new(
            service.handler(settings)?,
            settings.bus.clone(),
            database.clone(),
        );
        let token = shutdown.clone();
        let service = *service;
        tracker.spawn(async move {
            if let Err(e) = runner.run(token.clone()).await {
                error!(?service, error = %e, "service stopped with an error; shutting down");
                token.cancel();
            }
        });
    }
    tracker.close();
    info!(services = ?services, brokers = %settings.bus.brokers, "running; Ctrl-C stops");
    tracker.wait().await;
    database.close().await.ok();
    Ok(())
}
