//! `quark generate`: stream a completion (or a chat reply) from a checkpoint.

use super::train::resolve_checkpoint;
use quark_ml::chat::{self, Message, Role};
use quark_ml::checkpoint;
use quark_ml::generate::{GenerateOptions, Generation, generate};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A checkpoint directory, or a run directory (its latest checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Treat the prompt as a user message and answer it with the chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Text that ends the completion (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Streams the completion to stdout and returns it.
pub fn run(args: &GenerateArgs) -> anyhow::Result<Generation> {
    let device = quark_ml::device::select(&args.device)?;
    let (model, tokenizer) = checkpoint::load(&resolve_checkpoint(&args.model)?, device)?;
    let (prompt, stop_tokens) = if args.chat {
        let messages = [Message::new(Role::User, args.prompt.clone())];
        (
            chat::prompt(&tokenizer, &messages)?,
            chat::stop_tokens(&tokenizer),
        )
    } else {
        let ids = tokenizer
            .encode(args.prompt.as_str(), false)
            .map_err(|e| anyhow::anyhow!("cannot encode the prompt: {e}"))?;
        (ids.get_ids().to_vec(), vec![])
    };
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        stop: args.stop.clone(),
        stop_tokens,
        seed: args.seed,
        use_cache: true,
        logprobs: None,
    };
    let mut stdout = std::io::stdout().lock();
    let generation = generate(&model, &tokenizer, &prompt, &options, |piece| match write!(
        stdout,
        "{}",
        piece.text
    )
    .and_then(|_| stdout.flush())
    {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    })?;
    writeln!(stdout)?;
    Ok(generation)
}
