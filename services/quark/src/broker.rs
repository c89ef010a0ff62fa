//! The embedded broker: `quark-broker` (Tansu with SQLite storage) as a supervised child
//! process. It is restarted when it exits and when it stops answering the Kafka protocol
//! (a broker can accept connections and still fail every request), and stopped with SIGTERM
//! on shutdown. Its output goes to `<data_dir>/logs/broker.log`.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quark_runtime::Settings;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub struct EmbeddedBroker {
    command: PathBuf,
    listen: String,
    data_dir: PathBuf,
    log: PathBuf,
    health_interval: Duration,
    health_failures: u32,
}

/// A running supervisor: its task, and the process id of the broker it runs now.
pub struct Supervised {
    pub task: tokio::task::JoinHandle<()>,
    pub pid: watch::Receiver<Option<u32>>,
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
            log: settings.data_dir.join("logs").join("broker.log"),
            health_interval: Duration::from_millis(settings.broker.health_interval_ms.max(100)),
            health_failures: settings.broker.health_failures.max(1),
        })
    }

    pub fn address(&self) -> &str {
        &self.listen
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        Command::new(&self.command)
            .arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.command.display()))
    }

    /// Starts the broker and waits until it answers; then keeps it answering until
    /// `shutdown`, and stops it.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Supervised> {
        let probe = Probe::new(&self.listen)?;
        let mut child = self.spawn()?;
        self.wait_until_ready(&mut child, &probe).await?;
        info!(address = %self.listen, log = %self.log.display(), "embedded broker ready");
        let (pid_tx, pid) = watch::channel(child.id());
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.health_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        stop(&mut child).await;
                        return;
                    }
                    status = child.wait() => {
                        warn!(?status, "embedded broker exited; restarting");
                    }
                    _ = ticks.tick() => {
                        if probe.answers(self.health_interval).await {
                            failures = 0;
                            continue;
                        }
                        failures += 1;
                        if failures < self.health_failures {
                            continue;
                        }
                        warn!(failures, "embedded broker does not answer; restarting");
                        let _ = child.kill().await;
                    }
                }
                failures = 0;
                match self.restart(&probe, &shutdown).await {
                    Some(restarted) => child = restarted,
                    None => return,
                }
                let _ = pid_tx.send(child.id());
            }
        });
        Ok(Supervised { task, pid })
    }

    /// Starts a new broker process, retrying until one answers; `None` on shutdown.
    async fn restart(&self, probe: &Probe, shutdown: &CancellationToken) -> Option<Child> {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.spawn() {
                Ok(mut child) => match self.wait_until_ready(&mut child, probe).await {
                    Ok(()) => {
                        info!(pid = ?child.id(), "embedded broker restarted");
                        return Some(child);
                    }
                    Err(error) => {
                        warn!(error = %format!("{error:#}"), "restarted broker is not ready")
                    }
                },
                Err(error) => {
                    warn!(error = %format!("{error:#}"), "cannot restart the embedded broker")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Waits until the broker answers a metadata request (30 s at most).
    async fn wait_until_ready(&self, child: &mut Child, probe: &Probe) -> anyhow::Result<()> {
        for _ in 0..60 {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the embedded broker exited at start-up ({status}); is {} already in use? See {}",
                    self.listen,
                    self.log.display()
                );
            }
            if probe.answers(Duration::from_millis(500)).await {
                return Ok(());
            }
        }
        let _ = child.kill().await;
        bail!(
            "the embedded broker did not answer on {} within 30 s; see {}",
            self.listen,
            self.log.display()
        )
    }
}

/// One Kafka client kept for the supervisor's life; it asks for the cluster's metadata,
/// which Tansu answers from its storage, so a broker whose storage died fails the check.
#[derive(Clone)]
struct Probe {
    client: Arc<BaseConsumer>,
}

impl Probe {
    fn new(address: &str) -> anyhow::Result<Self> {
        let client = ClientConfig::new()
            .set("bootstrap.servers", address)
            .set("client.id", "quark-broker-health")
            .set("log_level", "0")
            .create()
            .context("cannot create the broker's health-check client")?;
        Ok(Probe {
            client: Arc::new(client),
        })
    }

    async fn answers(&self, timeout: Duration) -> bool {
        let client = self.client.clone();
        let started = tokio::time::Instant::now();
        let answered = tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout))
            .await
            .is_ok_and(|metadata| metadata.is_ok_and(|m| !m.brokers().is_empty()));
        if !answered {
            // A refused connection fails at once: do not spin.
            tokio::time::sleep_until(started + timeout).await;
        }
        answered
    }
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
