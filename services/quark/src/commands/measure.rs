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

/// How `--decode-tokens` is measured: over how many tokens, on how many intra-op threads.
#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// Each model's greedy decode speed over this many tokens (0: not measured).
    #[arg(long, default_value_t = 0)]
    pub decode_tokens: usize,
    /// Intra-op threads for the decode, e.g. 1 as the gateway's batch runs by default
    /// (`gateway.batch.threads`); libtorch's process-wide count when not given.
    #[arg(long)]
    pub decode_threads: Option<usize>,
}

/// Decode speeds in the order of the models given, and the threads they ran on.
pub struct DecodeSpeeds {
    pub tokens_per_s: Vec<f64>,
    pub threads: usize,
}

impl DecodeArgs {
    /// Each model's greedy decode speed (tokens per second, batch of one, KV cache): every
    /// model once to warm the allocator and caches, then in order and in reverse order
    /// (A B C C B A), so that none is always measured first; the mean of its two passes is
    /// reported. `None` when no decode was asked for. The thread limit holds for the calling
    /// thread from here on.
    pub fn measure(
        &self,
        models: &[&Gpt],
        tokenizer: &quark_ml::Tokenizer,
    ) -> anyhow::Result<Option<DecodeSpeeds>> {
        if self.decode_tokens == 0 {
            return Ok(None);
        }
        let threads = match self.decode_threads {
            Some(n) => quark_ml::threads::limit_this_thread(n)?,
            None => quark_ml::threads::intra_op(),
        };
        for m in models {
            decode_speed(m, tokenizer, self.decode_tokens)?;
        }
        let mut tokens_per_s = vec![0.0; models.len()];
        for i in (0..models.len()).chain((0..models.len()).rev()) {
            tokens_per_s[i] += decode_speed(models[i], tokenizer, self.decode_tokens)? / 2.0;
        }
        Ok(Some(DecodeSpeeds {
            tokens_per_s,
            threads,
        }))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use quark_ml::gpt::GptConfig;

    #[test]
    fn decode_speeds_come_per_model_on_the_threads_asked_for() {
        // Its own thread: the limit holds for the calling thread from then on.
        std::thread::spawn(|| {
            let tokenizer = quark_ml::tokenizer::train_chars("to be or not to be").unwrap();
            let model = |n_layer, seed| {
                let shape = GptConfig {
                    vocab_size: tokenizer.get_vocab_size(true) as i64,
                    block_size: 16,
                    n_layer,
                    n_head: 2,
                    n_embd: 16,
                    dropout: 0.0,
                    layout: Default::default(),
                };
                Gpt::new(shape, quark_ml::device::select("cpu").unwrap(), seed).unwrap()
            };
            let (two, one) = (model(2, 1), model(1, 2));
            let ask = |decode_tokens| DecodeArgs {
                decode_tokens,
                decode_threads: Some(1),
            };
            assert!(ask(0).measure(&[&two, &one], &tokenizer).unwrap().is_none());
            let decode = ask(8).measure(&[&two, &one], &tokenizer).unwrap().unwrap();
            assert_eq!(decode.threads, 1);
            assert_eq!(quark_ml::threads::intra_op(), 1);
            assert_eq!(decode.tokens_per_s.len(), 2);
            assert!(
                decode
                    .tokens_per_s
                    .iter()
                    .all(|&s| s.is_finite() && s > 0.0)
            );
            let none = DecodeArgs {
                decode_tokens: 8,
                decode_threads: Some(0),
            };
            assert!(
                none.measure(&[&two], &tokenizer).is_err(),
                "0 threads is refused"
            );
        })
        .join()
        .unwrap();
    }
}
