//! Learning from feedback on real libtorch (CPU): LoRA adapters (on the projections and on
//! the tied embedding) train alone and merge into the same model, the KL term keeps rehearsal text close to the base, and the selector
//! hands on the checkpoint that learnt most inside the limits, or says none fits.

mod common;

use common::{base, config, corpus, logits, max_diff};
use quark_ml::chat::{self, Message, Role};
use quark_ml::data::{Batches, Example, Mixture, Packed, Windows};
use quark_ml::gpt::Gpt;
use quark_ml::lora::{self, LoraConfig};
use quark_ml::probe::{Limits, Probe, Selector};
use quark_ml::shards::Shard;
use quark_ml::train::{Trainer, evaluate};
use std::ops::ControlFlow;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn taught(tokenizer: &quark_ml::Tokenizer) -> Vec<Example> {
    [
        ("to be?", "or not"),
        ("the?", "question"),
        ("sea?", "of troubles"),
    ]
    .iter()
    .map(|(q, a)| {
        let c = [
            Message::new(Role::User, *q),
            Message::new(Role::Assistant, *a),
        ];
        chat::render(tokenizer, &c).unwrap()
    })
    .collect()
}

/// The base model with what a test compares against: its embedding, an input, and the
/// logits for that input.
fn before_adapting(dir: &Path) -> (Gpt, quark_ml::Tokenizer, [Tensor; 3]) {
    let (model, tokenizer, _) = base(dir);
    let wte = model.vs.variables()["transformer.wte.weight"].copy();
    let input = Tensor::from_slice(&[3i64, 5, 7, 9, 11, 2]).view([1, -1]);
    let before = logits(&model, &input, false);
    (model, tokenizer, [wte, input, before])
}

#[test]
fn adapters_train_alone_and_merge_into_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, tokenizer, [wte, input, before]) = before_adapting(dir.path());
    let full = model.parameters();
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
    };
    lora::attach(&mut model, &config, 1).unwrap();
    // rank × (in + out) per projection: c_attn 32→96, attn.c_proj 32→32, c_fc 32→128,
    // mlp.c_proj 128→32; two layers.
    assert_eq!(
        model.parameters(),
        2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    );
    assert!(
        max_diff(&before, &logits(&model, &input, false)) == 0.0,
        "B starts at zero"
    );
    assert!(
        lora::attach(&mut model, &config, 1).is_err(),
        "attached twice"
    );

    let (mut run, loss_before, loss_after) =
        learn_taught(model, tokenizer, &dir.path().join("lora"));
    assert!(
        loss_after < loss_before / 2.0,
        "LoRA loss {loss_before} -> {loss_after}"
    );
    let frozen = run.model.vs.variables()["transformer.wte.weight"].copy();
    assert!(frozen.equal(&wte), "the base stays frozen");
    assert!(max_diff(&before, &logits(&run.model, &input, true)) == 0.0);

    let adapted = logits(&run.model, &input, false);
    assert!(
        max_diff(&before, &adapted) > 1e-3,
        "the adapter changed the model"
    );
    lora::merge(&mut run.model).unwrap();
    assert_eq!(run.model.parameters(), full);
    let diff = max_diff(&adapted, &logits(&run.model, &input, false));
    assert!(diff < 1e-5, "merged logits differ by {diff}");
    assert!(
        lora::merge(&mut run.model).is_err(),
        "nothing left to merge"
    );
    let none = LoraConfig {
        targets: vec!["q_proj".into()],
        ..config
    };
    assert!(
        lora::attach(&mut run.model, &none, 1).is_err(),
        "no projection matches"
    );
}

/// Adapters on the attention and MLP projections only: on this character-level model the
/// embedding's adapter is tested on its own.
fn projections() -> LoraConfig {
    LoraConfig {
        targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
        ..LoraConfig::default()
    }
}

#[test]
fn the_embedding_adapter_is_shared_by_the_tied_output_layer_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, tokenizer, [wte, input, before]) = before_adapting(dir.path());
    let vocab = tokenizer.get_vocab_size(true) as i64;
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["wte".into()],
    };
    lora::attach(&mut model, &config, 1).unwrap();
    // PEFT's embedding layout: A [rank, vocab], B [n_embd, rank]; the output layer adds none.
    assert_eq!(model.parameters(), 4 * (vocab + 32));
    assert!(
        max_diff(&before, &logits(&model, &input, false)) == 0.0,
        "A starts at zero"
    );

    let (mut run, loss_before, loss_after) =
        learn_taught(model, tokenizer, &dir.path().join("wte"));
    assert!(
        loss_after < loss_before,
        "embedding-only LoRA loss {loss_before} -> {loss_after}"
    );
    let adapted = logits(&run.model, &input, false);
    assert!(
        max_diff(&before, &adapted) > 1e-3,
        "the adapter moved the logits"
    );
    assert!(max_diff(&before, &logits(&run.model, &input, true)) == 0.0);

    // Merged into the one tied matrix, the update reaches the input and the output alike.
    lora::merge(&mut run.model).unwrap();
    let merged_wte = run.model.vs.variables()["transformer.wte.weight"].copy();
    assert!(!merged_wte.equal(&wte), "the embedding took the update");
    let diff = max_diff(&adapted, &logits(&run.model, &input, false));
    assert!(diff < 1e-5, "merged logits differ by {diff}");
}

/// Trains `model`'s adapters 60 steps on the taught examples alone: the run, and the
/// examples' loss before and after.
fn learn_taught(model: Gpt, tokenizer: quark_ml::Tokenizer, dir: &Path) -> (Trainer, f64, f64) {
    let examples = taught(&tokenizer);
    let packed = Packed::new(&examples, 3, 32, 0, 1).unwrap();
    let validation = packed.sequential(Device::Cpu);
    let before = evaluate(&model, &validation).unwrap();
    let mut cfg = config_for_feedback(60);
    cfg.kl_weight = 0.0;
    let mut run = Trainer::start(model, tokenizer, cfg, None, dir).unwrap();
    run.run(&packed, None, |_| ControlFlow::Continue(()))
        .unwrap();
    let after = evaluate(&run.model, &validation).unwrap();
    (run, before, after)
}

fn config_for_feedback(steps: u64) -> quark_ml::train::TrainConfig {
    let mut c = config(steps);
    c.batch_size = 4;
    c.grad_accum = 1;
    c.adamw.weight_decay = 0.0;
    // Adapters start from nothing: they learn at a higher rate than full fine-tuning.
    c.schedule.max_lr = 3e-2;
    c
}

/// KL(base ‖ model) on `windows`' text, per position.
fn drift(model: &Gpt, windows: &Windows) -> f64 {
    let batch = windows.batch(999, Device::Cpu).unwrap();
    let base = logits(model, &batch.input, true).log_softmax(-1, Kind::Float);
    let own = logits(model, &batch.input, false).log_softmax(-1, Kind::Float);
    (base.exp() * (&base - own))
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float)
        .double_value(&[])
}

#[test]
fn the_kl_term_keeps_rehearsal_text_close_to_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut drifts = Vec::new();
    for (i, weight) in [0.0, 1.0].into_iter().enumerate() {
        let at = dir.path().join(i.to_string());
        let (mut model, tokenizer, text) = base(&at);
        lora::attach(&mut model, &projections(), 1).unwrap();
        let examples = taught(&tokenizer);
        let packed = Packed::new(&examples, 2, 32, 0, 1).unwrap();
        let validation = packed.sequential(Device::Cpu);
        let windows = Windows::new(text, 2, 32, 3).unwrap();
        let mixture = Mixture::new(packed, windows).unwrap();
        let mut cfg = config_for_feedback(60);
        cfg.kl_weight = weight;
        let out = dir.path().join(format!("run-{i}"));
        let mut run = Trainer::start(model, tokenizer, cfg, None, &out).unwrap();
        let before = evaluate(&run.model, &validation).unwrap();
        run.run(&mixture, None, |_| ControlFlow::Continue(()))
            .unwrap();
        let after = evaluate(&run.model, &validation).unwrap();
        assert!(
            after < before * 0.75,
            "kl {weight}: taught loss {before} -> {after}"
        );
        let text = Shard::open(&at.join("train.tok")).unwrap();
        drifts.push(drift(&run.model, &Windows::new(text, 8, 32, 11).unwrap()));
    }
    assert!(
        drifts[1] < drifts[0] * 0.7,
        "KL from the base without and with the pull: {drifts:?}"
    );
}

fn probe(tokenizer: &quark_ml::Tokenizer, text: &Shard) -> Probe {
    let held_out = quark_ml::data::validation_batches(text, 32, 16, Some(16), Device::Cpu).unwrap();
    Probe::new(held_out, vec![], &taught(tokenizer), 32, Device::Cpu).unwrap()
}

/// Runs a LoRA fine-tuning with a selector under `limits`; returns the selection and the
/// steps trained.
fn select(dir: &Path, limits: Limits, stop_at: f64) -> (quark_ml::probe::Selection, u64) {
    let (mut model, tokenizer, text) = base(dir);
    let probe = probe(&tokenizer, &text);
    let reading = probe.read(&model, false).unwrap();
    lora::attach(&mut model, &projections(), 1).unwrap();
    let mut selector = Selector::new(probe, reading, limits, 5, stop_at).unwrap();
    let packed = Packed::new(&taught(&tokenizer), 3, 32, 0, 1).unwrap();
    let mut run = Trainer::start(
        model,
        tokenizer,
        config_for_feedback(60),
        None,
        &dir.join("ft"),
    )
    .unwrap();
    let outcome = run
        .run_observed(&packed, None, |p, m| {
            selector.observe(p.step, p.max_steps, m)
        })
        .unwrap();
    let selection = selector.finish(&run.model).unwrap();
    // The model holds the chosen weights.
    let again = probe_again(dir, &run.model);
    assert_eq!(again, selection.chosen.reading.taught_exact);
    (selection, outcome.state.step)
}

fn probe_again(dir: &Path, model: &Gpt) -> f64 {
    std::fs::create_dir_all(dir.join("again")).unwrap();
    let (tokenizer, text, _) = corpus(&dir.join("again"));
    probe(&tokenizer, &text)
        .read(model, false)
        .unwrap()
        .taught_exact
}

#[test]
fn the_selector_stops_once_learnt_and_keeps_the_best_checkpoint_inside_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let wide = Limits {
        max_perplexity_increase: 10.0,
        max_reply_loss_increase: 10.0,
        margin: 0.0,
    };
    let (selection, steps) = select(&dir.path().join("wide"), wide, 1.0);
    assert_eq!(selection.base.taught_exact, 0.0);
    assert!(selection.chosen.fits);
    assert_eq!(selection.chosen.reading.taught_exact, 1.0, "{selection:?}");
    assert!(steps < 60, "stopped early once learnt, at step {steps}");
    assert_eq!(selection.chosen.step, steps);
    assert!(selection.path.iter().all(|p| p.step % 5 == 0));

    // Perplexity may not rise at all: only checkpoints that do not move it fit.
    let tight = Limits {
        max_perplexity_increase: -0.5,
        ..wide
    };
    let (selection, steps) = select(&dir.path().join("tight"), tight, 1.0);
    assert!(!selection.chosen.fits, "no checkpoint halves perplexity");
    assert_eq!(steps, 60, "nothing fits: the run goes to the end");
    assert_eq!(
        selection.chosen.step, 60,
        "none fits: the last is handed on"
    );
}
