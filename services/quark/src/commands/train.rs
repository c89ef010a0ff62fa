//! `quark train`: pre-train a GPT on text files, fine-tune a checkpoint on conversations
//! (SFT), align it on preference pairs (DPO, or a Bradley–Terry reward model), or resume any
//! of them from its last checkpoint.

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use quark_ml::align::{self, DpoConfig, DpoLoss, Objective, RewardConfig};
use quark_ml::chat;
use quark_ml::checkpoint;
use quark_ml::corpus::{self, TokenizerSpec};
use quark_ml::data::{Batches, Packed, Windows, validation_batches};
use quark_ml::distill::DistillConfig;
use quark_ml::gpt::{Activation, Gpt, GptConfig, Layout};
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::preference::{self, Pairs};
use quark_ml::shards::Shard;
use quark_ml::train::{Outcome, Progress, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Everything a run needs; saved as `run.json` in the output directory so `--resume`
/// rebuilds the same data.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Text files to pre-train on (concatenated in order).
    #[arg(long, num_args = 1.., conflicts_with_all = ["sft"])]
    pub data: Vec<PathBuf>,
    /// Conversations (JSON lines) to fine-tune on; needs --from.
    #[arg(long, requires = "from")]
    pub sft: Option<PathBuf>,
    /// Preference pairs (JSON lines of prompt, chosen, rejected) to align --from on with DPO.
    #[arg(long, requires = "from", conflicts_with_all = ["data", "sft", "reward"])]
    #[serde(default)]
    pub dpo: Option<PathBuf>,
    /// Preference pairs to train a reward model on: --from's body with a scalar head.
    #[arg(long, requires = "from", conflicts_with_all = ["data", "sft"])]
    #[serde(default)]
    pub reward: Option<PathBuf>,
    /// DPO's β: how far the policy may move from the reference.
    #[arg(long, default_value_t = 0.1)]
    #[serde(default)]
    pub beta: f64,
    /// DPO's loss: `sigmoid` or `ipo`.
    #[arg(long, default_value = "sigmoid", value_parser = parse_dpo_loss)]
    #[serde(default = "sigmoid")]
    pub dpo_loss: DpoLoss,
    /// The reward model's centring coefficient (TRL's `center_rewards_coefficient`).
    #[arg(long)]
    #[serde(default)]
    pub center_rewards: Option<f64>,
    /// The checkpoint to start from (a checkpoint or a run directory: its latest).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// A checkpoint to distil: a student of --n-layer layers, started from its blocks, learns
    /// its next-token distribution over --data (forward KL mixed with the next-token loss).
    #[arg(long, requires = "data", conflicts_with_all = ["from", "sft", "dpo", "reward"])]
    #[serde(default)]
    pub distill: Option<PathBuf>,
    /// Distillation: the KL term's weight (the rest is the next-token loss).
    #[arg(long, default_value_t = 0.9)]
    #[serde(default)]
    pub kl_share: f64,
    /// Distillation: the softening of both distributions in the KL term.
    #[arg(long, default_value_t = 2.0)]
    #[serde(default)]
    pub distill_temperature: f64,
    /// `char`, `bpe` (byte-level BPE trained on the data) or a tokenizer.json.
    #[arg(long, default_value = "bpe")]
    pub tokenizer: String,
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Share of the text (the end of it) held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 4)]
    pub n_layer: i64,
    #[arg(long, default_value_t = 4)]
    pub n_head: i64,
    #[arg(long, default_value_t = 128)]
    pub n_embd: i64,
    #[arg(long, default_value_t = 64)]
    pub block_size: i64,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// No biases in the projections and LayerNorms (nanoGPT's default); the saved model holds
    /// zero biases, so it still loads as GPT-2.
    #[arg(long)]
    #[serde(default)]
    pub no_bias: bool,
    /// The MLP's activation: gelu_new (GPT-2's tanh approximation) or gelu (nanoGPT's).
    #[arg(long, default_value = "gelu_new")]
    #[serde(default)]
    pub activation: Activation,
    #[arg(long, default_value_t = 12)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: u64,
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Step at which the cosine reaches --min-lr (default: --steps).
    #[arg(long)]
    pub decay_steps: Option<u64>,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.99)]
    pub beta2: f64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 250)]
    pub eval_interval: u64,
    /// Validation windows for the periodic passes (the final pass reads the whole split).
    #[arg(long, default_value_t = 200)]
    pub eval_windows: usize,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_interval: u64,
    #[arg(long, default_value_t = 10)]
    pub log_interval: u64,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// auto (CUDA when present), cpu, cuda or cuda:<n>.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Fine-tune LoRA adapters of this rank on the frozen --from checkpoint (0: every weight).
    #[arg(long, default_value_t = 0, requires = "from")]
    #[serde(default)]
    pub lora_rank: i64,
    #[arg(long, default_value_t = 16.0)]
    #[serde(default)]
    pub lora_alpha: f64,
    /// PEFT module names the adapters go on.
    #[arg(long, value_delimiter = ',', default_value = "c_attn,c_proj,c_fc,wte")]
    #[serde(default)]
    pub lora_targets: Vec<String>,
}

const RUN_FILE: &str = "run.json";
/// DPO's reference log-probabilities, computed once by the starting model.
const REFERENCE_FILE: &str = "reference.json";

fn parse_dpo_loss(name: &str) -> Result<DpoLoss, String> {
    match name {
        "sigmoid" => Ok(DpoLoss::Sigmoid),
        "ipo" => Ok(DpoLoss::Ipo),
        _ => Err(format!("{name}: expected sigmoid or ipo")),
    }
}

fn sigmoid() -> DpoLoss {
    DpoLoss::Sigmoid
}

impl TrainArgs {
    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_steps: self.steps,
            schedule: Schedule {
                max_lr: self.lr,
                min_lr: self.min_lr,
                warmup_steps: self.warmup,
                decay_steps: self.decay_steps.unwrap_or(self.steps),
            },
            adamw: AdamWConfig {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: 1e-8,
                weight_decay: self.weight_decay,
            },
            grad_clip: self.grad_clip,
            eval_interval: self.eval_interval,
            eval_windows: Some(self.eval_windows),
            checkpoint_interval: self.checkpoint_interval,
            log_interval: self.log_interval,
            seed: self.seed,
            kl_weight: 0.0,
            objective: self.objective(),
        }
    }

    fn objective(&self) -> Objective {
        if self.dpo.is_some() {
            Objective::Dpo(DpoConfig {
                beta: self.beta,
                loss: self.dpo_loss,
            })
        } else if self.reward.is_some() {
            Objective::Reward(RewardConfig {
                center_rewards_coefficient: self.center_rewards,
            })
        } else if self.distill.is_some() {
            Objective::Distill(DistillConfig {
                kl_share: self.kl_share,
                temperature: self.distill_temperature,
            })
        } else {
            Objective::NextToken
        }
    }

    fn tokenizer_spec(&self) -> TokenizerSpec {
        match self.tokenizer.as_str() {
            "char" => TokenizerSpec::Characters,
            "bpe" => TokenizerSpec::ByteLevelBpe {
                vocab_size: self.vocab_size,
            },
            path => TokenizerSpec::File(path.into()),
        }
    }
}

/// A checkpoint directory, or a run directory's latest checkpoint.
pub fn resolve_checkpoint(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(checkpoint::CONFIG).exists() {
        return Ok(path.to_path_buf());
    }
    checkpoint::RunDir::new(path).latest()?.with_context(|| {
        format!(
            "{} is neither a checkpoint nor a run directory",
            path.display()
        )
    })
}

/// What the data of a run is, built from its arguments and output directory.
struct Data {
    batches: Box<dyn Batches>,
    validation: Vec<quark_ml::data::Batch>,
}

fn sft_data(
    args: &TrainArgs,
    model: &Gpt,
    tokenizer: &quark_ml::Tokenizer,
) -> anyhow::Result<Data> {
    let path = args.sft.as_ref().expect("sft data");
    let conversations = chat::read_jsonl(path)?;
    let examples = conversations
        .iter()
        .map(|c| chat::render(tokenizer, c))
        .collect::<Result<Vec<_>, _>>()?;
    let block = args.block_size as usize;
    let pad = tokenizer
        .token_to_id(quark_ml::tokenizer::END_OF_TEXT)
        .unwrap_or(0);
    // Every tenth conversation (at least one) is held out for validation when there are ten or more.
    let (train, val): (Vec<_>, Vec<_>) = if examples.len() >= 10 {
        examples
            .into_iter()
            .enumerate()
            .partition(|(i, _)| i % 10 != 9)
    } else {
        (examples.into_iter().enumerate().collect(), vec![])
    };
    let strip = |v: Vec<(usize, quark_ml::data::Example)>| {
        v.into_iter().map(|(_, e)| e).collect::<Vec<_>>()
    };
    let train = Packed::new(&strip(train), args.batch_size, block, pad, args.seed)?;
    if train.truncated > 0 {
        tracing::warn!(
            truncated = train.truncated,
            block,
            "conversations longer than the block were cut"
        );
    }
    let validation = match strip(val) {
        val if val.is_empty() => vec![],
        val => {
            Packed::new(&val, args.batch_size, block, pad, args.seed)?.sequential(model.device())
        }
    };
    Ok(Data {
        batches: Box::new(train),
        validation,
    })
}

fn pretrain_data(args: &TrainArgs, out: &Path, model: &Gpt) -> anyhow::Result<Data> {
    let data = out.join("data");
    let block = model.config.block_size as usize;
    let train = Shard::open(&data.join("train.tok"))?;
    let val = Shard::open(&data.join("val.tok"))?;
    Ok(Data {
        batches: Box::new(Windows::new(train, args.batch_size, block, args.seed)?),
        validation: validation_batches(&val, block, 64, None, model.device())?,
    })
}

/// Every pair of the file, in rows of the run's block; a DPO run's reference log-probabilities
/// are the starting model's, computed on the first start and read back on a resume.
fn preference_data(
    args: &TrainArgs,
    out: &Path,
    model: &Gpt,
    tokenizer: &quark_ml::Tokenizer,
    resuming: bool,
) -> anyhow::Result<Data> {
    let path = args.dpo.as_ref().or(args.reward.as_ref()).expect("pairs");
    let pairs = preference::encode(tokenizer, &preference::read_jsonl(path)?)?;
    let pad = tokenizer
        .token_to_id(quark_ml::tokenizer::END_OF_TEXT)
        .unwrap_or(0);
    let block = args.block_size as usize;
    let mut pairs = Pairs::new(pairs, args.batch_size, block, pad, args.seed)?;
    if args.dpo.is_some() {
        pairs = align::kept_reference(model, pairs, &out.join(REFERENCE_FILE), resuming)?;
    }
    Ok(Data {
        batches: Box::new(pairs),
        validation: vec![],
    })
}

fn data_for(
    args: &TrainArgs,
    out: &Path,
    model: &Gpt,
    tokenizer: &quark_ml::Tokenizer,
    resuming: bool,
) -> anyhow::Result<Data> {
    if args.dpo.is_some() || args.reward.is_some() {
        preference_data(args, out, model, tokenizer, resuming)
    } else if args.sft.is_some() {
        sft_data(args, model, tokenizer)
    } else {
        pretrain_data(args, out, model)
    }
}

fn prepare(args: &TrainArgs, spec: &TokenizerSpec, out: &Path) -> anyhow::Result<corpus::Prepared> {
    let prepared = corpus::prepare(&args.data, spec, args.val_fraction, &out.join("data"))?;
    eprintln!(
        "data: {} training and {} validation tokens, vocabulary {}",
        prepared.train_tokens,
        prepared.val_tokens,
        prepared.tokenizer.get_vocab_size(true)
    );
    Ok(prepared)
}

/// The model a new run starts from: a checkpoint (--from, LoRA attached or a score head added
/// as the run asks), a student of a checkpoint (--distill), or a new one; its tokenizer; the
/// checkpoint it came from.
fn starting_model(
    args: &TrainArgs,
    out: &Path,
    device: quark_ml::device::Device,
) -> anyhow::Result<(Gpt, quark_ml::Tokenizer, Option<PathBuf>)> {
    if let Some(teacher) = &args.distill {
        let dir = resolve_checkpoint(teacher)?;
        let (teacher, tokenizer) = checkpoint::load(&dir, device)?;
        let student = quark_ml::distill::student_of(&teacher, args.n_layer)?;
        prepare(
            args,
            &TokenizerSpec::File(dir.join(checkpoint::TOKENIZER)),
            out,
        )?;
        return Ok((student, tokenizer, Some(dir)));
    }
    Ok(match &args.from {
        Some(from) => {
            let dir = resolve_checkpoint(from)?;
            let (mut model, tokenizer) = checkpoint::load(&dir, device)?;
            if args.lora_rank > 0 {
                let lora = quark_ml::lora::LoraConfig {
                    rank: args.lora_rank,
                    alpha: args.lora_alpha,
                    targets: args.lora_targets.clone(),
                };
                quark_ml::lora::attach(&mut model, &lora, args.seed)?;
            }
            if args.reward.is_some() && !model.has_score_head() {
                model.add_score_head(Some(args.seed))?;
            }
            if !args.data.is_empty() {
                // Continued pre-training keeps the checkpoint's tokenizer.
                let spec = TokenizerSpec::File(dir.join(checkpoint::TOKENIZER));
                prepare(args, &spec, out)?;
            }
            (model, tokenizer, Some(dir))
        }
        None => {
            if args.data.is_empty() {
                bail!(
                    "nothing to train on: give --data FILES (pre-training) or --sft FILE --from CHECKPOINT"
                );
            }
            let prepared = prepare(args, &args.tokenizer_spec(), out)?;
            let shape = GptConfig {
                vocab_size: prepared.tokenizer.get_vocab_size(true) as i64,
                block_size: args.block_size,
                n_layer: args.n_layer,
                n_head: args.n_head,
                n_embd: args.n_embd,
                dropout: args.dropout,
                layout: Layout {
                    bias: !args.no_bias,
                    activation: args.activation,
                },
            };
            let model = Gpt::new(shape, device, args.seed)?;
            (model, prepared.tokenizer, None)
        }
    })
}

/// Starts a run in `out`, or resumes the one there.
pub fn train(
    args: Option<TrainArgs>,
    out: &Path,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let resuming = args.is_none();
    let (args, mut trainer) = match args {
        None => {
            let args: TrainArgs = checkpoint::read_json(&out.join(RUN_FILE))
                .with_context(|| format!("{} is not a run to resume", out.display()))?;
            let device = quark_ml::device::select(&args.device)?;
            let trainer = Trainer::resume(out, device)?;
            (args, trainer)
        }
        Some(args) => {
            if out.join(RUN_FILE).exists() {
                bail!(
                    "{} already holds a run: pass --resume to continue it, or choose another --out",
                    out.display()
                );
            }
            let device = quark_ml::device::select(&args.device)?;
            let config = args.train_config();
            config.validate()?;
            let (model, tokenizer, parent) = starting_model(&args, out, device)?;
            if args.block_size > model.config.block_size {
                bail!(
                    "block size {} is larger than the model's {}",
                    args.block_size,
                    model.config.block_size
                );
            }
            let trainer = Trainer::start(model, tokenizer, config, parent, out)?;
            let run_file = out.join(RUN_FILE);
            std::fs::create_dir_all(out)
                .and_then(|_| std::fs::write(&run_file, serde_json::to_string_pretty(&args)?))
                .with_context(|| format!("cannot write {}", run_file.display()))?;
            (args, trainer)
        }
    };
    if let Some(teacher) = &args.distill {
        let (teacher, _) = checkpoint::load(&resolve_checkpoint(teacher)?, trainer.model.device())?;
        trainer = trainer.with_teacher(teacher);
    }
    let data = data_for(&args, out, &trainer.model, &trainer.tokenizer, resuming)?;
    eprintln!(
        "{} {} parameters on {:?} ({} intra-op threads), from step {}",
        if resuming { "resuming" } else { "training" },
        trainer.model.parameters(),
        trainer.model.device(),
        quark_ml::threads::intra_op(),
        trainer.state().step
    );
    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("template"),
    );
    bar.set_position(trainer.state().step);
    let validation = (!data.validation.is_empty()).then_some(data.validation.as_slice());
    // On a terminal the bar shows progress; otherwise (logs, CI) a line per report does.
    let lines = bar.is_hidden();
    let outcome = trainer.run(data.batches.as_ref(), validation, |p: &Progress| {
        bar.set_position(p.step);
        if let (Some(loss), Some(tps)) = (p.loss, p.tokens_per_s) {
            let mfu = 100.0 * p.mfu.unwrap_or(0.0);
            bar.set_message(format!(
                "loss {loss:.4} lr {:.2e} {tps:.0} tok/s MFU {mfu:.1}%",
                p.lr
            ));
            if lines {
                tracing::info!(
                    step = p.step,
                    loss,
                    lr = p.lr,
                    tokens_per_s = tps,
                    mfu,
                    grad_norm = p.grad_norm,
                    stats = ?p.stats,
                    "train"
                );
            }
        }
        if let Some(val) = p.val_loss {
            bar.suspend(|| tracing::info!(step = p.step, val_loss = val, "validation"));
        }
        if let Some(dir) = &p.checkpoint {
            bar.suspend(
                || tracing::info!(step = p.step, checkpoint = %dir.display(), "checkpoint"),
            );
        }
        if stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    bar.finish_and_clear();
    if trainer.model.adapters().is_some() && !outcome.stopped {
        export_adapter(&mut trainer, out)?;
    }
    Ok(outcome)
}

/// A finished LoRA run: the adapter in PEFT's layout in `out/adapter`, and the model with it
/// merged in `out/merged` (a plain Hugging Face GPT-2 directory).
fn export_adapter(trainer: &mut Trainer, out: &Path) -> anyhow::Result<()> {
    let adapter = out.join("adapter");
    let merged = out.join("merged");
    for dir in [&adapter, &merged] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    std::fs::create_dir_all(&adapter)?;
    quark_ml::lora::save(&trainer.model, &adapter)?;
    quark_ml::lora::merge(&mut trainer.model)?;
    checkpoint::save(
        &merged,
        &trainer.model,
        &trainer.tokenizer,
        None,
        trainer.state(),
    )?;
    eprintln!(
        "adapter: {}\nmerged model: {}",
        adapter.display(),
        merged.display()
    );
    Ok(())
}

/// The summary printed when a run ends.
pub fn summary(outcome: &Outcome) -> String {
    let state = &outcome.state;
    format!(
        "{} at step {}/{}: train loss {}, validation loss {}, {:.0} tokens/s, MFU {:.2}%\ncheckpoint: {}\n",
        if outcome.stopped {
            "stopped"
        } else {
            "finished"
        },
        state.step,
        state.config.max_steps,
        state.train_loss.map_or("-".into(), |l| format!("{l:.4}")),
        state.val_loss.map_or("-".into(), |l| format!("{l:.4}")),
        outcome.tokens_per_s,
        100.0 * outcome.mfu,
        outcome.checkpoint.display()
    ) + &stats_line(state)
}

/// A preference run's last reported rewards, margin and accuracy.
fn stats_line(state: &quark_ml::train::TrainerState) -> String {
    if state.train_stats.is_empty() {
        return String::new();
    }
    let stats: Vec<String> = state
        .train_stats
        .iter()
        .map(|(name, v)| format!("{name} {v:.4}"))
        .collect();
    format!("{}\n", stats.join(", "))
}
