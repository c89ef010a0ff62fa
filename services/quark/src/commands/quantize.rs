//! `quark quantize`: a checkpoint's weights to int8 (per output channel), saved as a new
//! checkpoint; with `--held-out`, both models' perplexity on that text, and with
//! `--decode-tokens`, both models' decode speed (greedy, batch of one, KV cache).

use super::train::resolve_checkpoint;
use quark_ml::checkpoint;
use quark_ml::data::validation_batches;
use quark_ml::generate::{GenerateOptions, generate};
use quark_ml::gpt::Gpt;
use quark_ml::shards::{self, Shard};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// A checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// The new checkpoint's directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// A text file: report both models' perplexity on it (windows of the model's context).
    #[arg(long)]
    pub held_out: Option<PathBuf>,
    /// Report both models' decode speed over this many greedy tokens (0: not measured).
    #[arg(long, default_value_t = 0)]
    pub decode_tokens: usize,
}

/// Quantizes, saves, measures; returns the report (also printed as JSON by the caller).
pub fn run(args: &QuantizeArgs) -> anyhow::Result<Value> {
    let source = resolve_checkpoint(&args.model)?;
    // int8 matmuls are measured where they run as int8: on the CPU.
    let cpu = quark_ml::device::select("cpu")?;
    let (fp32, tokenizer) = checkpoint::load(&source, cpu)?;
    let (mut int8, _) = checkpoint::load(&source, cpu)?;
    quark_ml::quantize::quantize(&mut int8)?;
    let state = json!({"quantized_from": source, "method": quark_ml::quantize::METHOD});
    checkpoint::save(&args.out, &int8, &tokenizer, None, &state)?;
    let (before, after) = (
        checkpoint::weights_bytes(&source)?,
        checkpoint::weights_bytes(&args.out)?,
    );
    let mut report = json!({
        "checkpoint": args.out,
        "weights_bytes_fp32": before,
        "weights_bytes_int8": after,
        "smaller": before as f64 / after as f64,
    });
    if let Some(text) = &args.held_out {
        let shard_path = args.out.with_extension("held-out.tok");
        let text = std::fs::read_to_string(text)?;
        shards::write(&tokenizer, &[text], &shard_path)?;
        let shard = Shard::open(&shard_path)?;
        let block = fp32.config.block_size as usize;
        let batches = validation_batches(&shard, block, 8, None, cpu)?;
        let ppl = |m: &Gpt| quark_ml::train::evaluate(m, &batches).map(f64::exp);
        let (a, b) = (ppl(&fp32)?, ppl(&int8)?);
        report["perplexity_fp32"] = json!(a);
        report["perplexity_int8"] = json!(b);
        report["perplexity_change"] = json!(b / a - 1.0);
        std::fs::remove_file(&shard_path)?;
    }
    if args.decode_tokens > 0 {
        let speed = |m: &Gpt| decode_speed(m, &tokenizer, args.decode_tokens);
        // Each model twice, alternating: the first pass warms the allocator and caches.
        let (_, _) = (speed(&fp32)?, speed(&int8)?);
        let (a, b) = (speed(&fp32)?, speed(&int8)?);
        report["decode_tokens_per_s_fp32"] = json!(a);
        report["decode_tokens_per_s_int8"] = json!(b);
        report["decode_speedup"] = json!(b / a);
    }
    Ok(report)
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
