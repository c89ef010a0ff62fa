//! The chaos harness. The whole loop runs as separate `quark run` processes on the real broker
//! and one PostgreSQL database — knowledge and corpus ingest, pre-training, feedback from
//! concurrent clients, retraining, promotions and a rollback — while a seeded schedule SIGKILLs
//! services and the broker and cuts every database connection. Afterwards the history is
//! checked (`chaos/history.rs`): every event on a topic was processed by every consumer that
//! subscribes to it, no effect was applied twice, nothing was dead-lettered, and `quark replay`
//! rebuilds the registry the services built. Beside it, a training run SIGKILLed several times
//! and resumed each time ends with the same bytes as one left alone.
//!
//! `QUARK_CHAOS_KILLS` (default 12) and `QUARK_CHAOS_SEED` (default 17) set the run; the
//! summary is printed (add `-- --nocapture` to see it when the test passes). The long run:
//! `QUARK_CHAOS_KILLS=100 cargo test --workspace -- chaos --nocapture`.

#[path = "chaos/history.rs"]
mod history;

use quark_e2e::{Process, Stack, TestDb, bin, promoted, wait_for};
use quark_events::EventKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Every service of the loop, each its own process.
const SERVICES: &[&str] = &[
    "journal",
    "curator",
    "registry",
    "trainer",
    "evaluator",
    "augmenter",
    "indexer",
    "gateway",
];

/// The Tansu 0.6 defect in docs/operations.md: a broker restarted while a killed consumer is
/// still a member of its group keeps the dead member for good, and a dead member stays until
/// the rebalance gives up on it (`bus.max_poll_interval_ms`, 20 s here). When the broker's turn
/// comes, the schedule kills no service until this long after the last one, as an operator
/// would be told to wait before restarting a broker.
const BROKER_AFTER_CONSUMER_KILL: Duration = Duration::from_secs(25);

/// A second Tansu 0.6 defect this harness found: a replacement that joins its group while the
/// killed member still counts as alive (its session, 6 s here, not expired) can be assigned no
/// partition, and the dead member's expiry starts no new rebalance, so the group stops for good
/// (docs/operations.md). A killed service is restarted after this, as a supervisor with a
/// restart delay would.
const RESTART_DELAY: Duration = Duration::from_secs(8);

/// Everything else must be done within this.
const DEADLINE: Duration = Duration::from_secs(1200);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

/// The processes, the schedule that kills them, and what it has killed.
struct Chaos {
    stack: Stack,
    database: String,
    processes: BTreeMap<&'static str, Process>,
    rng: StdRng,
    kills: BTreeMap<&'static str, u32>,
    next_kill: Instant,
    last_consumer_kill: Instant,
    /// Killed services and when each is to be started again.
    restarts: Vec<(Instant, &'static str)>,
    /// When the broker's turn has come: it dies once no group can still hold a dead member.
    broker_due: Option<Instant>,
    /// Seconds into the run of each kill, and its victim.
    pub timeline: Vec<(u64, &'static str)>,
    started: Instant,
    /// Processes that exited without being killed (each restarted).
    exits: Vec<String>,
}

impl Chaos {
    fn start(seed: u64) -> Chaos {
        let mut stack = Stack::new();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let database = runtime.block_on(TestDb::Postgres.url(stack.data.path()));
        stack
            .env
            .push(("QUARK__DATABASE__URL".into(), database.clone()));
        let mut chaos = Chaos {
            stack,
            database,
            processes: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            kills: BTreeMap::new(),
            next_kill: Instant::now(),
            last_consumer_kill: Instant::now(),
            broker_due: None,
            restarts: vec![],
            timeline: vec![],
            started: Instant::now(),
            exits: vec![],
        };
        for service in SERVICES {
            chaos.spawn(service);
        }
        chaos.schedule();
        chaos
    }

    fn spawn(&mut self, service: &'static str) {
        let process = self.stack.spawn(&["run", service], service);
        self.processes.insert(service, process);
    }

    fn schedule(&mut self) {
        let wait = self.rng.random_range(2_000..6_000);
        self.next_kill = Instant::now() + Duration::from_millis(wait);
    }

    /// From now on only restarts what dies on its own.
    fn stop_killing(&mut self) {
        self.next_kill = Instant::now() + DEADLINE;
    }

    fn killed(&self) -> u32 {
        self.kills.values().sum()
    }

    /// Restarts what was killed once its delay is over and what died on its own; kills the
    /// next victim when it is due.
    fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<&'static str> = self
            .restarts
            .iter()
            .filter(|(at, _)| now >= *at)
            .map(|(_, service)| *service)
            .collect();
        self.restarts.retain(|(at, _)| now < *at);
        for service in due {
            self.spawn(service);
        }
        for service in SERVICES {
            let Some(process) = self.processes.get_mut(service) else {
                continue;
            };
            if let Ok(Some(status)) = process.0.try_wait() {
                self.exits.push(format!("{service}: {status}"));
                self.spawn(service);
            }
        }
        let victim = match self.broker_due {
            Some(due) if Instant::now() >= due => {
                self.broker_due = None;
                "broker"
            }
            Some(_) => return,
            None if Instant::now() < self.next_kill => return,
            // Services eight times in ten, then the broker or the database connections.
            None => match self.rng.random_range(0..10) {
                0 => {
                    self.broker_due = Some(self.last_consumer_kill + BROKER_AFTER_CONSUMER_KILL);
                    return;
                }
                1 => "database",
                _ => {
                    // One of the services running now.
                    let running: Vec<&'static str> = self.processes.keys().copied().collect();
                    running[self.rng.random_range(0..running.len())]
                }
            },
        };
        match victim {
            "broker" => self.stack.broker.crash_and_restart(),
            "database" => self.cut_database_connections(),
            service => {
                self.processes.remove(service).unwrap().crash();
                self.restarts
                    .push((Instant::now() + RESTART_DELAY, service));
                self.last_consumer_kill = Instant::now();
            }
        }
        *self.kills.entry(victim).or_default() += 1;
        self.timeline
            .push((self.started.elapsed().as_secs(), victim));
        self.schedule();
    }

    /// Terminates every server process of the test database: every pool loses every
    /// connection at once, in the middle of whatever it was doing.
    fn cut_database_connections(&self) {
        use sea_orm::ConnectionTrait;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let admin = sea_orm::Database::connect(&self.database).await.unwrap();
            admin
                .execute_unprepared(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .await
                .unwrap();
            admin.close().await.unwrap();
        });
    }

    /// `quark <args>` started in the background, its log beside the services'.
    fn command(&self, args: &[&str], log: &str) -> Process {
        self.stack.spawn(args, log)
    }

    fn champions(&self) -> usize {
        self.stack
            .events(EventKind::ModelPromoted)
            .iter()
            .filter_map(promoted)
            .count()
    }
}

/// A command retried until it succeeds (the broker it talks to may be down for a while).
struct Retried {
    args: Vec<String>,
    log: &'static str,
    running: Option<Process>,
    tries: u32,
    done: bool,
}

impl Retried {
    fn new(args: &[&str], log: &'static str) -> Retried {
        Retried {
            args: args.iter().map(|a| a.to_string()).collect(),
            log,
            running: None,
            tries: 0,
            done: false,
        }
    }

    fn tick(&mut self, chaos: &Chaos) {
        if self.done {
            return;
        }
        match self.running.as_mut().map(|p| p.0.try_wait().unwrap()) {
            Some(None) => {}
            Some(Some(status)) if status.success() => self.done = true,
            _ => {
                let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
                self.running = Some(chaos.command(&args, self.log));
                self.tries += 1;
            }
        }
    }
}

/// Clients that each ask the gateway a question and correct the answer every few seconds
/// until stopped, retrying each call until it succeeds; each returns how often it retried.
fn clients(
    port: u16,
    clients: usize,
    corrected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<u32>> {
    (0..clients)
        .map(|client| {
            let (stop, corrected) = (stop.clone(), corrected.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
                let mut retries = 0;
                for i in 0.. {
                    let question = format!("Client {client}, question {i}: who rules Denmark?");
                    let ask = json!({"model": "champion", "messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0});
                    let Some(served) = until_accepted(&http, &url("/v1/chat/completions"), &ask, None, &stop, &mut retries) else { break };
                    let feedback = json!({"request_id": served["id"], "rating": 1, "correction": format!("Claudius rules, says client {client} ({i}).")});
                    if until_accepted(&http, &url("/v1/feedback"), &feedback, Some(quark_e2e::KEY), &stop, &mut retries).is_none() {
                        break;
                    }
                    corrected.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(5));
                }
                retries
            })
        })
        .collect()
}

/// POSTs `body` until it gets a 2xx (a gateway being restarted refuses connections, or has
/// no model yet); None once `stop` is set.
fn until_accepted(
    http: &reqwest::blocking::Client,
    url: &str,
    body: &Value,
    key: Option<&str>,
    stop: &AtomicBool,
    retries: &mut u32,
) -> Option<Value> {
    while !stop.load(Ordering::Relaxed) {
        let mut request = http.post(url).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Ok(response) = request.send()
            && response.status().is_success()
            && let Ok(json) = response.json::<Value>()
        {
            return Some(json);
        }
        *retries += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

/// Short documents, one passage each.
fn knowledge(dir: &Path) -> usize {
    let facts = [
        "The lighthouse on the skerry was first lit in 1871.",
        "Its lamp burned colza oil until 1904, then paraffin.",
        "The keeper's cottage has three rooms and a slate roof.",
        "The orchard behind the mill grows russet apples.",
        "The mill wheel turned until the river silted up in 1931.",
    ];
    std::fs::create_dir_all(dir).unwrap();
    for (i, fact) in facts.iter().enumerate() {
        std::fs::write(dir.join(format!("fact-{i}.txt")), fact).unwrap();
    }
    facts.len()
}

/// What the workload did while the schedule killed.
struct Workload {
    seconds: f64,
    client_retries: u32,
    ingest_tries: Vec<u32>,
    rollback_tries: Vec<u32>,
    corrections: usize,
}

/// Drives the loop under the schedule until `kills` kills are done, 12 corrections sent and a
/// rollback carried out: ingest, then feedback once a first model is served, then a rollback
/// after each new champion that feedback trained (a rollback is a champion move too:
/// 1 → 2, rollback 3 → 4, …).
fn drive(chaos: &mut Chaos, kills: u32, corpus: &str, docs: &Path) -> Workload {
    let started = Instant::now();
    let mut ingests = [
        Retried::new(
            &["ingest", docs.to_str().unwrap(), "--kind", "knowledge"],
            "ingest",
        ),
        Retried::new(&["seed", "--ingest", corpus], "seed"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers: Option<Vec<JoinHandle<u32>>> = None;
    let corrected = Arc::new(AtomicUsize::new(0));
    let mut rollbacks: Vec<Retried> = vec![];
    let (mut last_look, mut champions) = (Instant::now(), 0);
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "the loop did not finish under chaos: {} kills {:?}, {champions} champions, exits {:?}",
            chaos.killed(),
            chaos.kills,
            chaos.exits
        );
        chaos.tick();
        ingests.iter_mut().for_each(|i| i.tick(chaos));
        if last_look.elapsed() > Duration::from_secs(3) {
            (champions, last_look) = (chaos.champions(), Instant::now());
        }
        if champions >= 1 && writers.is_none() {
            let port = chaos.stack.port;
            writers = Some(clients(port, 3, corrected.clone(), stop.clone()));
        }
        let rolling = rollbacks.last().is_some_and(|r| !r.done);
        if !rolling && champions >= 2 * (rollbacks.len() + 1) {
            rollbacks.push(Retried::new(&["rollback", "--reason", "chaos"], "rollback"));
        }
        rollbacks.iter_mut().for_each(|r| r.tick(chaos));
        let rolled_back = rollbacks.last().is_some_and(|r| r.done);
        if chaos.killed() >= kills && corrected.load(Ordering::Relaxed) >= 12 && rolled_back {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let writers = writers.unwrap().into_iter();
    Workload {
        seconds: started.elapsed().as_secs_f64(),
        client_retries: writers.map(|w| w.join().unwrap()).sum(),
        ingest_tries: ingests.iter().map(|i| i.tries).collect(),
        rollback_tries: rollbacks.iter().map(|r| r.tries).collect(),
        corrections: corrected.load(Ordering::Relaxed),
    }
}

#[test]
fn chaos_loses_nothing_and_applies_nothing_twice() {
    let (kills, seed) = (
        setting("QUARK_CHAOS_KILLS", 12) as u32,
        setting("QUARK_CHAOS_SEED", 17),
    );
    let mut chaos = Chaos::start(seed);
    let docs = chaos.stack.data.path().join("knowledge-docs");
    let documents = knowledge(&docs);
    let corpus = chaos.stack.corpus.display().to_string();
    let work = drive(&mut chaos, kills, &corpus, &docs);

    let report = history::check(&mut chaos, documents);
    let resumed = resumed_training_is_identical(seed);
    println!(
        "chaos: seed {seed}, {} kills {:?} in {:.0} s, {} exits on their own {:?}; client retries {}, \
         ingest tries {:?}, rollbacks {} (tries {:?}), corrections {}",
        chaos.killed(),
        chaos.kills,
        work.seconds,
        chaos.exits.len(),
        chaos.exits,
        work.client_retries,
        work.ingest_tries,
        work.rollback_tries.len(),
        work.rollback_tries,
        work.corrections,
    );
    println!(
        "chaos: kills (seconds into the run, victim): {:?}",
        chaos.timeline
    );
    println!("chaos: {report}");
    let differences = &report.replay_differences;
    if !differences.is_empty() {
        let replay_only = differences
            .iter()
            .filter(|d| d.contains("replay only"))
            .count();
        println!(
            "chaos: registry vs replay: {} rows only live, {replay_only} only replayed; the first 20:",
            differences.len() - replay_only
        );
    }
    for difference in differences.iter().take(20) {
        println!("chaos: registry vs replay: {difference}");
    }
    println!("chaos: {resumed}");
    assert!(chaos.killed() >= kills);
    report.assert_clean();
    assert!(resumed.identical, "{resumed}");
}

/// A `quark train` run killed at seeded moments (each after a new checkpoint) and resumed
/// each time, against the same run left alone: the final weights, byte for byte.
struct Resumed {
    kills: u32,
    identical: bool,
}

impl std::fmt::Display for Resumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "training killed {} times and resumed ends bit-identical to one left alone: {}",
            self.kills, self.identical
        )
    }
}

fn resumed_training_is_identical(seed: u64) -> Resumed {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("verse.txt");
    std::fs::write(
        &corpus,
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
            .repeat(200),
    )
    .unwrap();
    let train = |out: &str, resume: bool| -> Child {
        let mut args = vec!["train", "--out", out];
        if resume {
            args.push("--resume");
        } else {
            args.extend([
                "--data",
                corpus.to_str().unwrap(),
                "--steps",
                "400",
                "--checkpoint-interval",
                "10",
                "--tokenizer",
                "char",
                "--n-layer",
                "2",
                "--n-head",
                "2",
                "--n-embd",
                "32",
                "--block-size",
                "32",
                "--dropout",
                "0.1",
                "--device",
                "cpu",
            ]);
        }
        Command::new(bin("quark"))
            .args(&args)
            .current_dir(dir.path())
            .env("QUARK__TELEMETRY__LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    assert!(train("alone", false).wait().unwrap().success());

    let mut rng = StdRng::seed_from_u64(seed);
    let mut run = Process(train("killed", false));
    let latest = dir.path().join("killed").join("latest");
    let mut kills = 0;
    loop {
        // Killed a seeded while after its newest checkpoint, mid-step or mid-save.
        let seen = std::fs::read_to_string(&latest).ok();
        wait_for("a new checkpoint", Duration::from_secs(120), || {
            run.0.try_wait().unwrap().is_some() || std::fs::read_to_string(&latest).ok() != seen
        });
        if run.0.try_wait().unwrap().is_some() || kills == 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        if run.0.try_wait().unwrap().is_some() {
            break;
        }
        run.crash();
        kills += 1;
        run = Process(train("killed", true));
    }
    assert!(
        run.0.wait().unwrap().success(),
        "the last resumed run failed"
    );
    let weights = |run: &str| {
        let step = dir.path().join(run).join("step-00000400");
        std::fs::read(step.join(quark_ml::checkpoint::WEIGHTS)).unwrap()
    };
    Resumed {
        kills,
        identical: weights("alone") == weights("killed"),
    }
}
