//! `quark quantize`: a checkpoint's weights to int8 (per output channel), saved as a new
//! checkpoint; with `--held-out`, both models' perplexity on that text, and with
//! `--decode-tokens`, both models' decode speed (greedy, batch of one, KV cache).

use super::measure::{DecodeArgs, perplexities};
use super::train::resolve_checkpoint;
use quark_ml::checkpoint;
use serde_json::{Value, json};
use std::path::PathBuf;

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
    #[command(flatten)]
    pub decode: DecodeArgs,
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
        let scratch = args.out.with_extension("held-out.tok");
        let ppl = perplexities(&[&fp32, &int8], &tokenizer, text, &scratch)?;
        report["perplexity_fp32"] = json!(ppl[0]);
        report["perplexity_int8"] = json!(ppl[1]);
        report["perplexity_change"] = json!(ppl[1] / ppl[0] - 1.0);
    }
    if let Some(decode) = args.decode.measure(&[&fp32, &int8], &tokenizer)? {
        let speed = decode.tokens_per_s;
        report["decode_tokens_per_s_fp32"] = json!(speed[0]);
        report["decode_tokens_per_s_int8"] = json!(speed[1]);
        report["decode_speedup"] = json!(speed[1] / speed[0]);
        report["decode_threads"] = json!(decode.threads);
    }
    Ok(report)
}
