//! `quark-broker`: runs Tansu on one listener with SQLite storage until SIGINT or SIGTERM.

use anyhow::{Context, bail};
use clap::Parser;
use std::path::PathBuf;
use tansu_broker::{NODE_ID, broker::Broker, coordinator::group::administrator::Controller};
use tansu_storage::StorageContainer;
use url::Url;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9092. Tansu listens on IPv4 only.
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: String,
    /// Directory that holds the broker's SQLite database (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "quark")]
    cluster_id: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUARK_BROKER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.listen.starts_with("localhost") {
        bail!("listen on 127.0.0.1, not localhost: clients may resolve localhost to ::1");
    }
    let listener = Url::parse(&format!("tcp://{}", args.listen))
        .with_context(|| format!("invalid listen address {:?}", args.listen))?;

    // Tansu resolves sqlite:// URLs against the working directory (an absolute path is
    // re-rooted there), so run inside the data directory with a relative file name.
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    std::env::set_current_dir(&args.data_dir)
        .with_context(|| format!("cannot enter {}", args.data_dir.display()))?;
    let storage = Url::parse("sqlite://broker.db")?;

    let broker = Broker::<Controller<StorageContainer>, StorageContainer>::builder()
        .node_id(NODE_ID)
        .cluster_id(args.cluster_id)
        .incarnation_id(uuid::Uuid::new_v4())
        .advertised_listener(listener.clone())
        .listener(listener)
        .storage(storage)
        .silent(true)
        .build()
        .await
        .context("cannot start the broker")?;
    // `main` serves until SIGINT/SIGTERM and then drains connections.
    broker.main(tokio::time::Instant::now()).await?;
    Ok(())
}
