//! `quark dashboard`: the operators' page against the configured cluster; `quark up` serves
//! it too (`dashboard.listen`).

use crate::Migrator;
use anyhow::Context;
use quark_dashboard::Dashboard;
use quark_runtime::{Settings, db};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Binds `dashboard.listen` and serves the page there until `shutdown`; returns its URL and
/// the server's task.
pub async fn start(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    let listen = &settings.dashboard.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("dashboard.listen: cannot listen on {listen}"))?;
    let url = format!("http://{}/", listener.local_addr()?);
    let dashboard = Arc::new(
        Dashboard::new(
            settings.bus.clone(),
            database,
            settings.gateway.api_keys.clone(),
            Duration::from_millis(settings.dashboard.refresh_ms.max(100)),
            settings.dashboard.keep_messages,
        )
        .with_schema_registry(&settings.schema_registry.url),
    );
    info!(%url, "dashboard");
    let task = tokio::spawn(quark_dashboard::serve(listener, dashboard, shutdown));
    Ok((url, task))
}
