//! What `quark quantize` and `quark compare` read of models: perplexity on a held-out text
//! and greedy decode speed.

use quark_ml::data::validation_batches;
use quark_ml::generate::{GenerateOptions, generate};
use quark_ml::gpt::Gpt;
use quark_ml::shards::{self, Shard};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

/// Each model's perplexity on the text at `text` (windows of the first model's context),
/// tokenized with `tokenizer` into `scratch` (removed after).
pub fn perplexities(
    models: &[&Gpt],
    tokenizer: &quark_ml::Tokenizer,
    text: &Path,
    scratch: &Path,
) -> anyhow::Result<Vec<f64>> {
    let text = std::fs::read_to_string(text)?;
    shards::write(tokenizer, &[text], scratch)?;
    let shard = Shard::open(scratch)?;
    let block = models[0].config.block_size as usize;
    let batches = validation_batches(&shard, block, 8, None, models[0].device())?;
    let measured = models
        .iter()
        .map(|m| Ok(quark_ml::train::evaluate(m, &batches)?.exp()))
        .collect();
    std::fs::remove_file(scratch)?;
    measured
}

/// Each model's greedy decode speed (tokens per second, batch of one, KV cache) over
/// `tokens` tokens: every model once to warm the allocator and caches, then in order and in
/// reverse order (A B C C B A), so that none is always measured first; the mean of its two
/// passes is reported.
pub fn decode_speeds(
    models: &[&Gpt],
    tokenizer: &quark_ml::Tokenizer,
    tokens: usize,
) -> anyhow::Result<Vec<f64>> {
    for m in models {
        decode_speed(m, tokenizer, tokens)?;
    }
    let mut speeds = vec![0.0; models.len()];
    for i in (0..models.len()).chain((0..models.len()).rev()) {
        speeds[i] += decode_speed(models[i], tokenizer, tokens)? / 2.0;
    }
    Ok(speeds)
}

/// Greedy tokens per second from a one-token prompt, every position the context allows up
/// to `tokens` (the end-of-text id never stops it: no stop tokens).
fn decode_speed(
    model: &Gpt,
    tokenizer: &quark_ml::Tokenizer,
    tokens: usize,
) -> anyhow::Result<f64> {
    let max_tokens = tokens.min(model.config.block_size as usize - 1);
    let options = GenerateOptions {
        max_tokens,
        ..Default::default()
    };
    let started = Instant::now();
    let g = generate(model, tokenizer, &[0], &options, |_| {
        ControlFlow::Continue(())
    })?;
    Ok(g.tokens.len() as f64 / started.elapsed().as_secs_f64())
}
