//! The embedded broker: `quark-broker` (Tansu with SQLite storage) as a supervised child
//! process, restarted if it dies, stopped with SIGTERM on shutdown.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quark_runtime::Settings;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct EmbeddedBroker {
    command: PathBuf,
    listen: String,
    data_dir: PathBuf,
}

impl EmbeddedBroker {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let command = if settings.broker.command.is_empty() {
            let exe = std::env::current_exe().context("cannot locate the quark executable")?;
            exe.with_file_name("quark-broker")
        } else {
            PathBuf::from(&settings.broker.command)
        };
        if !command.exists() {
            bail!(
                "the embedded broker {} is missing: build it with `cargo build -p quark-broker`, or set broker.command",
                command.display()
            );
        }
        Ok(EmbeddedBroker {
            command,
            listen: settings.broker.listen.clone(),
            data_dir: settings.data_dir.join("broker"),
        })
    }

    pub fn address(&self) -> &str {
        &self.listen
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        Command::new(&self.command)
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.command.display()))
    }

    /// Starts the broker, waits until it accepts connections, and keeps it running until
    /// `shutdown`; then stops it and waits for it to exit.
    pub async fn start(
        self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut child = self.spawn()?;
        wait_until_listening(&self.listen, &mut child).await?;
        info!(address = %self.listen, "embedded broker ready");
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        stop(&mut child).await;
                        return;
                    }
                    status = child.wait() => {
                        warn!(?status, "embedded broker exited; restarting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        match self.spawn() {
                            Ok(restarted) => child = restarted,
                            Err(error) => warn!(%error, "cannot restart the embedded broker"),
                        }
                    }
                }
            }
        }))
    }
}

async fn wait_until_listening(address: &str, child: &mut Child) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the embedded broker exited at start-up ({status}); is {address} already in use?"
            );
        }
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the embedded broker did not listen on {address} within 30 s")
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SIGTERM lets Tansu drain its connections; kill it if it takes too long.
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    info!("embedded broker stopped");
}
