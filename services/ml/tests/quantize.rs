//! int8 weight-only quantization: held-out perplexity within 1 % of fp32, a checkpoint that
//! stores int8 and reloads to the same logits, and generation from the int8 weights alone
//! and in a continuous batch.

mod common;

use common::{logits, max_diff, pretrained};
use quark_ml::batch::{BatchLimits, Engine};
use quark_ml::checkpoint;
use quark_ml::data::validation_batches;
use quark_ml::generate::{GenerateOptions, generate};
use quark_ml::quantize::quantize;
use quark_ml::shards::Shard;
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

fn perplexity(model: &quark_ml::gpt::Gpt, held_out: &Shard) -> f64 {
    let batches = validation_batches(held_out, 32, 8, None, Device::Cpu).unwrap();
    quark_ml::train::evaluate(model, &batches).unwrap().exp()
}

#[test]
fn int8_weights_keep_perplexity_and_reload_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 60);
    let held_out = Shard::open(&dir.path().join("val.tok")).unwrap();
    let fp32 = perplexity(&model, &held_out);
    let fp32_dir = dir.path().join("fp32");
    checkpoint::save(&fp32_dir, &model, &tokenizer, None, &serde_json::json!({})).unwrap();

    let (mut model, tokenizer) = checkpoint::load(&fp32_dir, Device::Cpu).unwrap();
    quantize(&mut model).unwrap();
    assert!(model.is_quantized());
    assert!(quantize(&mut model).is_err(), "quantized twice");
    let int8 = perplexity(&model, &held_out);
    let change = int8 / fp32 - 1.0;
    assert!(change.abs() < 0.01, "perplexity {fp32:.4} → {int8:.4}");
    // The projections and the embeddings left the fp32 variables: only LayerNorms and
    // biases are fp32 weights now.
    let remaining: Vec<String> = model.vs.variables().into_keys().collect();
    assert!(
        remaining
            .iter()
            .all(|n| n.contains("ln_") || n.ends_with(".bias")),
        "{remaining:?}"
    );

    let int8_dir = dir.path().join("int8");
    checkpoint::save(&int8_dir, &model, &tokenizer, None, &serde_json::json!({})).unwrap();
    let stored = Tensor::read_safetensors(int8_dir.join(checkpoint::WEIGHTS)).unwrap();
    let kinds = |kind: Kind| stored.iter().filter(|(_, t)| t.kind() == kind).count();
    let names: Vec<_> = stored
        .iter()
        .map(|(n, t)| format!("{n} {:?}", t.kind()))
        .collect();
    assert_eq!(
        kinds(Kind::Int8),
        2 + 4 * model.config.n_layer as usize,
        "{names:?}"
    );
    let size = |d: &std::path::Path| {
        std::fs::metadata(d.join(checkpoint::WEIGHTS))
            .unwrap()
            .len()
    };
    let bytes: i64 = stored
        .iter()
        .map(|(_, t)| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64)
        .sum();
    assert!(
        size(&int8_dir) as i64 - bytes < 8_192,
        "the file is its tensors and a header"
    );
    assert!(
        size(&int8_dir) * 5 < size(&fp32_dir) * 2,
        "int8 at most 40 % of fp32 here (tiny vocabulary)"
    );

    let (reloaded, _) = checkpoint::load(&int8_dir, Device::Cpu).unwrap();
    assert!(reloaded.is_quantized());
    let input = Tensor::from_slice(&[3i64, 5, 8, 13, 2, 1]).view([1, -1]);
    assert_eq!(
        max_diff(
            &logits(&model, &input, false),
            &logits(&reloaded, &input, false)
        ),
        0.0
    );

    // Generation from the int8 weights, alone and in a continuous batch, agrees.
    let prompt = tokenizer
        .encode("To be, or", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let options = GenerateOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let alone = generate(&reloaded, &tokenizer, &prompt, &options, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let engine = Engine::spawn(reloaded, tokenizer, BatchLimits::default()).unwrap();
    let batched = engine
        .generate(&prompt, &options, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(alone.tokens, batched.tokens);
    assert_eq!(alone.tokens.len(), 12);
}

#[test]
fn only_a_plain_policy_is_quantized() {
    let config = common::shape(40, 0.0);
    let mut reward = quark_ml::gpt::Gpt::new(config, Device::Cpu, 1).unwrap();
    reward.add_score_head(Some(2)).unwrap();
    let error = quantize(&mut reward).unwrap_err().to_string();
    assert!(error.contains("reward model"), "{error}");
}
