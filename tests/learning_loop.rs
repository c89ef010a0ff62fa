//! The continuous-learning loop end to end, over the real broker, SQLite, libtorch and HTTP:
//! `quark up` starts cold from a corpus and serves its first model; the official OpenAI
//! client talks to the gateway; corrections sent as feedback retrain the champion (the process
//! is killed mid-retraining and restarted: it resumes and trains once), which is evaluated,
//! promoted, and has learnt them; noise released by `quark retrain` is stopped by the gate; a
//! live regression rolls back while clients stream; `quark replay` rebuilds the same registry.
//! quark up's dashboard, in Chromium, shows the first cycle, the champion and new feedback live.
//! Neither the API key nor personal data sent to the gateway reaches a log or a topic.
//! A second trainer joining the group shares the jobs.

use quark_e2e::*;
use quark_events::{Event, EventKind, Id, ModelTrained, PromotionReason, RetrainTrigger};
use quark_ml::chat::{self, Message, Role};
use quark_ml::data::Packed;
use quark_runtime::ArtifactStore;
use rdkafka::Message as _;
use rdkafka::message::Headers;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// SFT loss of a model on `pairs`, through the ML core.
fn loss_on(quark: &Stack, model: &ModelTrained, pairs: &[(&str, &str)]) -> f64 {
    let store = ArtifactStore::local(quark.data.path().join("quark").join("artifacts")).unwrap();
    let dir = quark
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

/// Random text as "corrections" of the questions the model has learnt to answer: feedback
/// that would make it worse.
fn noise(seed: u64) -> Vec<(&'static str, String)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    CORRECTIONS[..3]
        .iter()
        .map(|(question, _)| {
            let junk: String = (0..300)
                .map(|_| rng.random_range(b'!'..=b'~') as char)
                .collect();
            (*question, junk)
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
    let mut quark = Stack::new();
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
    // The job reported its progress while it ran: steps forward, finite losses, on its chain.
    let model = trained(&quark.events(EventKind::ModelTrained)).remove(0);
    let reports: Vec<_> = quark
        .events(EventKind::TrainingProgressed)
        .into_iter()
        .filter_map(|e| match e {
            Event::TrainingProgressed(p) if Some(p.job_id) == model.header.causation_id => Some(p),
            _ => None,
        })
        .collect();
    assert!(
        !reports.is_empty(),
        "no training.progressed\n{}",
        quark.log()
    );
    assert!(reports.windows(2).all(|w| w[0].step < w[1].step));
    assert!(reports.iter().any(|p| p.loss.is_some()));
    assert!(reports.iter().all(|p| p.step <= p.max_steps
        && p.loss.is_none_or(f64::is_finite)
        && p.header.correlation_id == model.header.correlation_id));
    // The dashboard quark up serves shows the cycle, its finished job and the promotion.
    let dashboard = quark
        .log_fields("up")
        .iter()
        .find(|f| f["message"] == "dashboard")
        .and_then(|f| f["url"].as_str().map(str::to_string))
        .expect("quark up logs its dashboard's URL");
    let first_id = first.to_string();
    let shows = |state: &Value| {
        let listed = |v: &Value| v.as_array().cloned().unwrap_or_default();
        let cycle = listed(&state["loop"]["cycles"]).iter().any(|c| {
            c["at"] == "promoted"
                && c["model_id"] == first_id.as_str()
                && c["cause"] == "data.collected"
        });
        let job = listed(&state["jobs"])
            .iter()
            .any(|j| j["model_id"] == first_id.as_str() && !listed(&j["loss"]).is_empty());
        let gate = listed(&state["models"]["moves"]).iter().any(|m| {
            m["model_id"] == first_id.as_str()
                && m["reason"] == "gate_passed"
                && m["evaluation"]["outcome"] == "completed"
        });
        cycle && job && gate
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let state: Value = quark
            .http
            .get(format!("{dashboard}api/state"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default();
        if shows(&state) {
            break;
        }
        let (cycles, jobs, moves) = (
            &state["loop"]["cycles"],
            &state["jobs"],
            &state["models"]["moves"],
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard never showed the first cycle:\ncycles {cycles}\njobs {jobs}\nmoves {moves}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for(
        "the gateway to serve the first model",
        Duration::from_secs(60),
        || quark.served_model() == Some(first.to_string()),
    );
    let (status, body) = quark.post(
        "/v1/completions",
        json!({"model": first.to_string(), "prompt": "To be, or not", "max_tokens": 8, "seed": 1}),
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
    python_script(&script);

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

    // Standard third-party clients through the same broker first (aiokafka's idempotent
    // producer used to leave it half-dead); they send praise, which teaches nothing, so the
    // loop below sees exactly its own corrections.
    // quark up's dashboard is open in Chromium meanwhile: their feedback shows without a reload.
    let shots = screenshots(quark.data.path());
    let champion = first.to_string();
    let mut page = BrowserScript::start("dashboard_up.js", &[&dashboard, &champion, &shots]);
    let shown: usize = page.hear().strip_prefix("READY ").unwrap().parse().unwrap();
    let praise = python_clients(
        &quark.broker.address,
        2,
        true,
        &["aiokafka-idempotent", "kafka-python", "confluent-kafka"],
    );
    page.tell(&format!("EXPECT {}", shown + praise.len()));
    assert_eq!(page.hear(), "DONE");
    page.finish();

    // Learning from feedback: four corrections → retrain → evaluate → promote. The process is
    // killed while it retrains and restarted: the job resumes and is trained once.
    let feedback_ids = quark.correct(CORRECTIONS);
    let job = quark.wait_for_checkpoint();
    quark.process.take().unwrap().crash();
    let retrain = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(retrain.trigger, RetrainTrigger::FeedbackThreshold);
    assert_eq!(job, retrain.header.event_id.to_string(), "the job killed");
    assert!(
        trained(&quark.events(EventKind::ModelTrained))
            .iter()
            .all(|m| m.header.causation_id != Some(retrain.header.event_id)),
        "killed before it finished"
    );
    // Tansu moves a group's partitions to a new member reliably only once the dead member's
    // session has expired (docs/operations.md): restart after it, as an operator would.
    std::thread::sleep(Duration::from_secs(8));
    quark.up();
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
    // The restarted trainer resumed from the checkpoint instead of starting over.
    let resumed = quark.log_fields("up").iter().any(|fields| {
        fields["message"] == "training"
            && fields["resuming"] == true
            && fields["step"].as_u64().is_some_and(|step| step > 0)
    });
    assert!(
        resumed,
        "the job resumed from its checkpoint\n{}",
        quark.log()
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
        loss_on(&quark, &first_model, CORRECTIONS),
        loss_on(&quark, &second, CORRECTIONS),
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

    // The gate holds: three of those questions "corrected" with noise (fewer than the
    // threshold) are released by `quark retrain`; the model trained on them is rejected.
    let noise = noise(7);
    let noise_pairs: Vec<(&str, &str)> = noise.iter().map(|(q, a)| (*q, a.as_str())).collect();
    let noise_ids = quark.correct(&noise_pairs);
    let out = quark.command(&["retrain"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asked: Id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("retrain.requested ")
        .expect("quark retrain prints the request's id")
        .parse()
        .unwrap();
    let noise_request = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) if r.header.causation_id == Some(asked) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(noise_request.trigger, RetrainTrigger::Manual);
    let released = quark
        .events(EventKind::DatasetPrepared)
        .into_iter()
        .find_map(|e| match e {
            Event::DatasetPrepared(d) if noise_request.dataset_ids == [d.dataset_id] => Some(d),
            _ => None,
        })
        .expect("the request names the released dataset");
    let mut sources: Vec<String> = released
        .source_collections
        .iter()
        .map(Id::to_string)
        .collect();
    let mut expected = noise_ids;
    sources.sort();
    expected.sort();
    assert_eq!(sources, expected, "exactly the pending noise was released");
    let noisy = quark.wait(EventKind::ModelTrained, |e| match e {
        Event::ModelTrained(m) if m.header.causation_id == Some(noise_request.header.event_id) => {
            Some(m.clone())
        }
        _ => None,
    });
    let mut verdict = None;
    wait_for("the noisy model's evaluation", STACK_TIMEOUT, || {
        let of_noisy = |kind| {
            quark.events(kind).into_iter().find(|e| match e {
                Event::EvalCompleted(c) => c.model_id == noisy.model_id,
                Event::EvalRegressed(r) => r.model_id == noisy.model_id,
                _ => false,
            })
        };
        verdict = of_noisy(EventKind::EvalRegressed).or_else(|| of_noisy(EventKind::EvalCompleted));
        verdict.is_some()
    });
    let regressed = match verdict {
        Some(Event::EvalRegressed(r)) => r,
        other => panic!("the gate let noise through: {other:?}"),
    };
    let noisy = [noisy];
    // Noise costs held-out perplexity, the corrections learnt before or the language of
    // replies, or is not learnt inside those limits.
    let costs = [
        "perplexity",
        "learnt_loss",
        "reply_loss",
        "taught_exact_match",
    ];
    assert!(
        regressed
            .regressions
            .iter()
            .any(|c| costs.contains(&c.metric.as_str())),
        "{:?}",
        regressed.regressions
    );
    // `quark models` says why it was rejected.
    let out = quark.command(&["models", "--json"]).output().unwrap();
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rejected = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == noisy[0].model_id.to_string())
        .expect("the rejected model is listed");
    let failed: Vec<&str> = rejected["evaluations"][0]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["metric"].as_str())
        .collect();
    let expected: Vec<&str> = regressed
        .regressions
        .iter()
        .map(|c| c.metric.as_str())
        .collect();
    assert_eq!(failed, expected, "{rejected}");

    // Asked again with nothing pending, the augmenter names every dataset released so far;
    // the champion was trained on the corrections and its rejected child on the noise, so
    // the trainer trains nothing: no correction is trained twice on the same base.
    let out = quark.command(&["retrain"]).output().unwrap();
    assert!(out.status.success());
    let again = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r)
            if r.trigger == RetrainTrigger::Manual
                && !r.dataset_ids.is_empty()
                && r.header.event_id != noise_request.header.event_id =>
        {
            Some(r.clone())
        }
        _ => None,
    });
    let mut named = again.dataset_ids.clone();
    named.sort();
    let mut released = vec![second.dataset_ids[0], noise_request.dataset_ids[0]];
    released.sort();
    assert_eq!(named, released, "the earlier datasets are named again");
    wait_for("the trainer to decline the request", STACK_TIMEOUT, || {
        quark.log_fields("up").iter().any(|f| {
            f["request"] == again.header.event_id.to_string()
                && f["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("nothing to train"))
        })
    });
    assert!(
        trained(&quark.events(EventKind::ModelTrained))
            .iter()
            .all(|m| m.header.causation_id != Some(again.header.event_id)),
        "nothing was trained for the repeated request"
    );

    // `quark models` shows what the champion learnt and what it cost.
    let out = quark.command(&["models"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .skip_while(|l| !l.starts_with(&champion.to_string()))
        .find(|l| l.trim_start().starts_with("learnt:"))
        .unwrap_or_else(|| panic!("no learnt line for the champion:\n{text}"));
    assert!(
        line.contains("loss on the corrections") && line.contains("perplexity"),
        "{line}"
    );
    // model.trained carries the trainer's choice inside the gate (every weight is trained
    // here: no adapter).
    assert!(
        second.adapter.is_none(),
        "no adapter when every weight is trained"
    );
    let choice = second
        .choice
        .as_ref()
        .expect("a fine-tuning run says what it chose");
    assert!(
        choice.fits_gate && choice.step > 0 && choice.step <= second.steps,
        "{choice:?}"
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
    // Crash and restart left exactly one model per job: the first, the retrained, the noisy.
    assert_eq!(
        trained(&quark.events(EventKind::ModelTrained)).len(),
        3,
        "{}",
        quark.log()
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
    // back to the previous champion, and the gateway swaps back while clients keep asking.
    let load = Load::start(quark.port, 4);
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
        blocked: 0,
        flagged: 0,
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
    std::thread::sleep(Duration::from_secs(1));
    // No request was dropped by the swap: every one completed (streams to their [DONE]),
    // and the replies came from the old champion, then the restored one.
    let replies = load.stop();
    let failures: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    let served: std::collections::HashSet<&String> =
        replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        served,
        [champion.to_string(), first.to_string()]
            .iter()
            .collect::<std::collections::HashSet<_>>(),
        "{} replies",
        replies.len()
    );

    // A prompt and a correction with personal data in them, sent with the key.
    let (status, body) = quark.post(
        "/v1/chat/completions",
        json!({"model": "champion", "messages": [{"role": "user", "content": format!("Mail {EMAIL} or call {PHONE}")}], "max_tokens": 4}),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let request = body["id"].as_str().unwrap().to_string();
    let (status, body) = quark.post(
        "/v1/feedback",
        json!({"request_id": request, "rating": 4, "correction": format!("Write to {EMAIL}.")}),
        Some(KEY),
    );
    assert_eq!(status, 202, "{body}");
    let feedback = body["feedback_id"].as_str().unwrap().to_string();
    let scrubbed = quark.wait(EventKind::FeedbackReceived, |e| match e {
        Event::FeedbackReceived(f) if f.feedback_id.to_string() == feedback => f.correction.clone(),
        _ => None,
    });
    assert_eq!(scrubbed, "Write to <EMAIL>.");
    quark.wait(EventKind::ResponseServed, |e| match e {
        Event::ResponseServed(r) if r.request_id == request => Some(()),
        _ => None,
    });

    // Replay: once the registry has folded the last telemetry windows, stop, drop and rebuild
    // it from the topics; it is the same.
    let published = |quark: &Stack| -> i64 {
        quark
            .events(EventKind::TelemetryReported)
            .iter()
            .map(|e| match e {
                Event::TelemetryReported(t) => t.requests,
                _ => 0,
            })
            .sum()
    };
    wait_for(
        "the registry to fold every telemetry window",
        Duration::from_secs(60),
        || {
            let folded: i64 = registry_snapshot(quark.data.path())["feedback"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|row| row["requests"].as_i64())
                .sum();
            // Two windows without new traffic: nothing is left to publish.
            std::thread::sleep(Duration::from_secs(2));
            folded == published(&quark)
        },
    );
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
    nothing_secret_was_written(&quark);
    let out = quark
        .command(&["models", "--at", &chrono_now_ms().to_string()])
        .output()
        .unwrap();
    let at: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(at["champion"]["model_id"], first.to_string());
    assert_eq!(at["champion"]["reason"], "rollback");
}

/// Clients asking the gateway without pause, alternately streaming, until stopped; each reply
/// is the model that served it, or what went wrong.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<Result<String, String>>>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|client| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::new();
                    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
                    let mut replies = Vec::new();
                    let mut stream = client % 2 == 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let body = json!({"model": "champion", "messages": [{"role": "user", "content": "Who is the king?"}], "max_tokens": 16, "stream": stream});
                        replies.push(Load::ask(&http, &url, &body, stream));
                        stream = !stream;
                    }
                    replies
                })
            })
            .collect();
        Load { stop, clients }
    }

    fn ask(
        http: &reqwest::blocking::Client,
        url: &str,
        body: &Value,
        stream: bool,
    ) -> Result<String, String> {
        let response = http
            .post(url)
            .json(body)
            .send()
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        let reply: Value = if stream {
            if !text.trim_end().ends_with("data: [DONE]") {
                return Err(format!("a stream cut short: {text}"));
            }
            let first = text.lines().find_map(|l| l.strip_prefix("data: "));
            serde_json::from_str(first.unwrap_or_default()).map_err(|e| e.to_string())?
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())?
        };
        reply["model"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no model in {reply}"))
    }

    fn stop(self) -> Vec<Result<String, String>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    }
}

const EMAIL: &str = "jane.doe@gmail.com";
const PHONE: &str = "+1 415-555-0132";

/// Neither the API key nor the personal data sent is in any log or any message of any topic
/// (payloads, keys and headers).
fn nothing_secret_was_written(quark: &Stack) {
    let secrets = [KEY, EMAIL, PHONE];
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(quark.data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(
        logs.iter().any(|(_, text)| text.len() > 10_000),
        "the logs were read"
    );
    let messages = every_message(&quark.broker.bus());
    let mut written = Vec::new();
    for m in &messages {
        let headers = m.headers().into_iter().flat_map(|h| h.iter());
        let values = headers.filter_map(|h| h.value).map(<[u8]>::to_vec);
        let parts = [m.payload(), m.key()]
            .into_iter()
            .flatten()
            .map(<[u8]>::to_vec);
        written.extend(
            parts
                .chain(values)
                .map(|bytes| (m.topic().to_string(), bytes)),
        );
    }
    assert!(messages.len() > 100, "every topic was read");
    for secret in secrets {
        let found = |bytes: &[u8]| bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        for (source, bytes) in logs.iter().chain(&written) {
            assert!(!found(bytes), "{secret:?} written to {source}");
        }
    }
}

fn chrono_now_ms() -> i64 {
    quark_events::Timestamp::now().0
}

#[test]
fn trainers_in_one_consumer_group_share_the_jobs_one_at_a_time() {
    let mut quark = Stack::new();
    let first = quark.serve_first_champion();
    // A dataset of corrections to train on (its own retraining runs in `quark up`).
    quark.correct(CORRECTIONS);
    let dataset = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) => Some(r.dataset_ids.clone()),
        _ => None,
    });

    // A second trainer joins the group; wait until it holds partitions of retrain.requested.
    let _second = quark.spawn(&["run", "trainer"], "trainer");
    wait_for(
        "the second trainer to be given partitions",
        STACK_TIMEOUT,
        || {
            quark.log_of("trainer").lines().any(|line| {
                line.contains("partitions assigned") && line.contains("retrain.requested/")
            })
        },
    );

    // Jobs on every partition of the topic (keys are random: publish until all are covered).
    let publisher = quark_events::bus::Publisher::new(&quark.broker.bus(), "probe").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let partitions = quark.broker.bus().partitions;
    let mut covered = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    while covered.len() < partitions as usize {
        assert!(jobs.len() < 30, "the partitioner never covered {covered:?}");
        let request = Event::RetrainRequested(quark_events::RetrainRequested {
            header: quark_events::EventHeader::root("probe"),
            request_id: Id::random(),
            run_kind: quark_events::RunKind::Sft,
            base_model_id: Some(first),
            dataset_ids: dataset.clone(),
            trigger: RetrainTrigger::Manual,
            reason: "shared jobs".into(),
        });
        let delivery = runtime.block_on(publisher.publish(&request)).unwrap();
        covered.insert(delivery.partition);
        jobs.push(request.header().event_id);
    }

    // Every job handled exactly once, by one of the two: trained, or declined because the
    // same corrections were trained on the same base already (by `quark up`'s own retraining
    // or whichever job finished first).
    let declined = |quark: &Stack, log: &str| -> std::collections::HashSet<String> {
        quark
            .log_fields(log)
            .iter()
            .filter(|f| {
                f["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("nothing to train"))
            })
            .filter_map(|f| f["request"].as_str().map(str::to_string))
            .filter(|r| jobs.iter().any(|j| j.to_string() == *r))
            .collect()
    };
    let trained_jobs = |quark: &Stack| {
        trained(&quark.events(EventKind::ModelTrained))
            .into_iter()
            .filter(|m| jobs.iter().any(|j| m.header.causation_id == Some(*j)))
            .count()
    };
    let done = |quark: &Stack| {
        trained_jobs(quark) + declined(quark, "up").len() + declined(quark, "trainer").len()
    };
    wait_for("every job to be handled", STACK_TIMEOUT, || {
        done(&quark) >= jobs.len()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(done(&quark), jobs.len(), "no job handled twice");
    let mut by_instance = Vec::new();
    for log in ["up", "trainer"] {
        let lines = quark.trainer_lines(log);
        // One at a time: each "training" is followed by its own "trained" before the next.
        let mut running: Option<&str> = None;
        for (message, job) in &lines {
            match message.as_str() {
                "training" => {
                    assert_eq!(running, None, "{log}: {job} started during another job");
                    running = Some(job);
                }
                "trained" => {
                    assert_eq!(running, Some(job.as_str()), "{log}");
                    running = None;
                }
                _ => {}
            }
        }
        let mut mine: std::collections::HashSet<String> = lines
            .into_iter()
            .filter(|(message, job)| {
                message == "trained" && jobs.iter().any(|j| j.to_string() == *job)
            })
            .map(|(_, job)| job)
            .collect();
        mine.extend(declined(&quark, log));
        by_instance.push(mine);
    }
    assert!(
        by_instance.iter().all(|mine| !mine.is_empty()),
        "both trainers took jobs: {by_instance:?}\n{}",
        quark.log_of("trainer")
    );
    assert!(by_instance[0].is_disjoint(&by_instance[1]));
    assert_eq!(by_instance[0].len() + by_instance[1].len(), jobs.len());
}
