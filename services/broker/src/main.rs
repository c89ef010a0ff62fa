//! `quark-broker`: runs Tansu on one listener with SQLite storage until SIGINT or SIGTERM.
//!
//! A panic anywhere ends the process: Tansu runs its storage engine in a task of its own,
//! and a panic there would leave a broker that accepts connections and fails every
//! request. Dead, it is restarted by its supervisor (`quark up`); half-dead, nobody knows.

mod memo;
mod storage;

use anyhow::{Context, bail};
use clap::Parser;
use std::path::PathBuf;
use storage::EmbeddedStorage;
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
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

    let engine = StorageContainer::builder()
        .cluster_id(args.cluster_id.clone())
        .node_id(NODE_ID)
        .advertised_listener(listener.clone())
        .storage(storage)
        .silent(true)
        .build()
        .await
        .context("cannot open the broker's storage")?;
    let storage = EmbeddedStorage::new(engine);
    let groups = Controller::with_storage(storage.clone())?;
    let broker = Broker::new(
        NODE_ID,
        &args.cluster_id,
        listener.clone(),
        listener,
        storage,
        groups,
        uuid::Uuid::new_v4(),
    );
    // `main` serves until SIGINT/SIGTERM and then drains connections.
    broker.main(tokio::time::Instant::now()).await?;
    Ok(())
}
