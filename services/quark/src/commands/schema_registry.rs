//! The schema registry a `quark` process uses: the embedded one that `quark up` serves on its
//! database when `schema_registry.url` is empty, or a client of the external one it names. Either
//! way it is installed process-wide, so every publisher writes Confluent framing with its ids
//! and every consumer resolves every registered version by id and by fingerprint.

use crate::Migrator;
use anyhow::Context;
use quark_events::codec::install_registry;
use quark_runtime::{Settings, db};
use quark_schema_registry::http::shown_url;
use quark_schema_registry::{ApiKeys, RemoteRegistry, Store, preregister, serve};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// `quark up`: serves the embedded registry (every event schema pre-registered) until
/// `shutdown` and puts its URL into `settings`; with `schema_registry.url` set, connects to
/// that registry instead.
pub async fn start(settings: &mut Settings, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if !settings.schema_registry.url.is_empty() {
        return connect(settings).await;
    }
    let database = db::open::<Migrator>(&settings.database_url())
        .await
        .context("cannot open the database")?;
    let store = Store::open(database)
        .await
        .context("cannot read the schema registry")?;
    preregister(&store)
        .await
        .context("the event schemas cannot be registered")?;
    let listen = &settings.schema_registry.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("the schema registry cannot listen on {listen}"))?;
    // `serve` logs the URL ("schema registry listening").
    settings.schema_registry.url = format!("http://{}", listener.local_addr()?);
    install_registry(Arc::new(store.resolver()));
    let token = shutdown.clone();
    let keys = ApiKeys::new(&settings.gateway.api_keys);
    tokio::spawn(async move {
        if let Err(e) = serve(listener, store, keys, token.clone()).await {
            error!(error = %e, "the schema registry stopped; shutting down");
            token.cancel();
        }
    });
    Ok(())
}

/// Every other command: with `schema_registry.url` set, registers the event schemas there and
/// installs a client of it; without, nothing (single-object framing, current schemas only).
pub async fn connect(settings: &Settings) -> anyhow::Result<()> {
    let url = &settings.schema_registry.url;
    if url.is_empty() {
        return Ok(());
    }
    // Never the credentials a URL may carry, in messages or logs.
    let shown = shown_url(url);
    let registry = RemoteRegistry::connect(url)
        .await
        .with_context(|| format!("cannot use the schema registry at {shown}"))?;
    install_registry(registry);
    info!(url = shown, "schema registry (external) in use");
    Ok(())
}
