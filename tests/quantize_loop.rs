//! int8 in the loop, over the real broker: `quark retrain --quantize` asks for a quantize run
//! of the champion; the trainer stores its weights as int8 (model.trained, run kind
//! quantize, a checkpoint 3.5× smaller or more); the gate measures it like any candidate and
//! the registry promotes it; the gateway serves the int8 model. A redelivered request
//! quantizes nothing twice.

use quark_e2e::*;
use quark_events::bus::Publisher;
use quark_events::{Event, EventKind, ModelTrained, RunKind};
use std::time::Duration;

fn quantized(quark: &Stack) -> Vec<ModelTrained> {
    let mut models = trained(&quark.events(EventKind::ModelTrained));
    models.retain(|m| m.run_kind == RunKind::Quantize);
    models
}

#[test]
fn a_quantized_champion_passes_the_gate_and_is_served() {
    let mut quark = Stack::new();
    // The cold-start vocabulary: the embedding is most of a small model's weights.
    quark
        .env
        .push(("QUARK__CURATE__TOKENIZER_VOCAB_SIZE".into(), "2048".into()));
    let champion = quark.serve_first_champion();
    let out = quark
        .command(&["retrain", "--quantize", "--reason", "int8 for serving"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) if r.run_kind == RunKind::Quantize => Some(r.clone()),
        _ => None,
    });
    let model = quark.wait(EventKind::ModelTrained, |e| match e {
        Event::ModelTrained(m) if m.run_kind == RunKind::Quantize => Some(m.clone()),
        _ => None,
    });
    assert_eq!(model.parent_model_id, Some(champion));
    assert_eq!(model.steps, 0);
    let smaller = model.metrics["weights_smaller"];
    assert!(smaller >= 3.5, "int8 weights {smaller:.2}× smaller");

    let (promoted, _) = quark.wait(EventKind::ModelPromoted, |e| {
        promoted(e).filter(|(id, _)| *id == model.model_id)
    });
    let verdict = quark.wait(EventKind::EvalCompleted, |e| match e {
        Event::EvalCompleted(c) if c.model_id == promoted => Some(c.clone()),
        _ => None,
    });
    let check = verdict
        .checks
        .iter()
        .find(|c| c.metric == "perplexity")
        .unwrap();
    let (baseline, ppl) = (check.baseline.unwrap(), check.candidate);
    assert!(
        (ppl / baseline - 1.0).abs() < 0.01,
        "perplexity {baseline:.3} → {ppl:.3}"
    );
    wait_for(
        "the gateway to serve the int8 model",
        Duration::from_secs(60),
        || quark.served_model() == Some(promoted.to_string()),
    );
    let (status, body) = quark.post(
        "/v1/completions",
        serde_json::json!({"model": "champion", "prompt": "To be", "max_tokens": 8}),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["usage"]["completion_tokens"].as_u64().map(|n| n > 0),
        Some(true)
    );

    // The same request again (same event id): the runner's ledger knows it, nothing is
    // quantized twice. Wait until the trainer has read it (its lag on the topic is 0).
    let publisher = Publisher::new(&quark.broker.bus(), "probe").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(publisher.publish(&Event::RetrainRequested(request)))
        .unwrap();
    let total = quark.events(EventKind::RetrainRequested).len().to_string();
    wait_for(
        "the trainer to read the redelivered request",
        Duration::from_secs(120),
        || {
            let out = quark.command(&["topics"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.starts_with(&["retrain.requested", &total]) && l.contains("trainer=0")
            })
        },
    );
    let all = quantized(&quark);
    assert_eq!(all.len(), 1, "one int8 model for one request");
}
