//! `quark compare --model A --model B …`: models side by side on the same held-out text and
//! the same decode, on the CPU: parameters, layers, weight size, perplexity, greedy decode
//! speed (e.g. a teacher, its distilled student and a student trained from scratch).

use super::measure::{DecodeArgs, perplexities};
use super::train::resolve_checkpoint;
use quark_ml::checkpoint;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Checkpoints or run directories (their latest checkpoint); the first one's tokenizer
    /// reads the held-out text for all.
    #[arg(long = "model", required = true, num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// A text file: each model's perplexity on it (windows of the first model's context).
    #[arg(long)]
    pub held_out: Option<PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

pub fn run(args: &CompareArgs) -> anyhow::Result<Value> {
    let cpu = quark_ml::device::select("cpu")?;
    let dirs: Vec<PathBuf> = args
        .models
        .iter()
        .map(|m| resolve_checkpoint(m))
        .collect::<anyhow::Result<_>>()?;
    let loaded: Vec<_> = dirs
        .iter()
        .map(|d| checkpoint::load(d, cpu))
        .collect::<Result<_, _>>()?;
    let models: Vec<_> = loaded.iter().map(|(m, _)| m).collect();
    let tokenizer = &loaded[0].1;
    let mut rows: Vec<Value> = dirs
        .iter()
        .zip(&models)
        .map(|(dir, m)| {
            Ok(json!({
                "model": dir,
                "parameters": m.parameters(),
                "n_layer": m.config.n_layer,
                "weights_bytes": checkpoint::weights_bytes(dir)?,
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(text) = &args.held_out {
        let scratch =
            std::env::temp_dir().join(format!("quark-compare-{}.tok", std::process::id()));
        for (row, ppl) in rows
            .iter_mut()
            .zip(perplexities(&models, tokenizer, text, &scratch)?)
        {
            row["perplexity"] = json!(ppl);
        }
    }
    if let Some(decode) = args.decode.measure(&models, tokenizer)? {
        for (row, speed) in rows.iter_mut().zip(decode.tokens_per_s) {
            row["decode_tokens_per_s"] = json!(speed);
            row["decode_threads"] = json!(decode.threads);
        }
    }
    Ok(Value::Array(rows))
}
