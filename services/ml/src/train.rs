//! The training loop: gradient accumulation, clipping, AdamW on a warm-up + cosine schedule,
//! periodic validation, throughput and MFU, checkpoints and exact resume.
//!
//! Determinism: batches are a function of (seed, batch index) and, with dropout, the torch
//! generator is re-seeded from (seed, step) before every step, so a run stopped at a checkpoint and
//! resumed computes the same updates, bit for bit on the CPU, as one run straight through.

use crate::MlError;
use crate::align::{self, Objective, Step};
use crate::checkpoint::{self, RunDir};
use crate::data::{Batch, Batches};
use crate::gpt::Gpt;
use crate::optim::{AdamW, AdamWConfig, Schedule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

/// Serialises users of torch's one process-wide random generator (dropout masks).
static TORCH_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: u64,
    pub max_steps: u64,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Global gradient-norm bound; 0 turns clipping off.
    pub grad_clip: f64,
    /// Steps between validation passes; 0 validates only at the end.
    pub eval_interval: u64,
    /// Windows of the validation split used by the periodic passes (the final pass uses all).
    pub eval_windows: Option<usize>,
    /// Steps between checkpoints; 0 checkpoints only at the end.
    pub checkpoint_interval: u64,
    /// Steps between loss reports (each one syncs with the device).
    pub log_interval: u64,
    pub seed: u64,
    /// Weight of the pull toward the base model on rehearsal text: KL(base ‖ model) of the
    /// next-token distributions, added to the loss on the rows of a batch past
    /// [`Batch::text_from`]. 0 turns it off.
    #[serde(default)]
    pub kl_weight: f64,
    /// What the run minimises: next-token loss, or a preference objective on pairs.
    #[serde(default)]
    pub objective: Objective,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |why: &str| Err(MlError::Config(why.into()));
        if self.batch_size == 0 || self.grad_accum == 0 || self.max_steps == 0 {
            return bad("batch size, accumulation and steps must be positive");
        }
        if self.schedule.max_lr <= 0.0 || self.schedule.min_lr < 0.0 {
            return bad("learning rates must be positive");
        }
        if self.log_interval == 0 {
            return bad("log interval must be positive");
        }
        if !(self.kl_weight >= 0.0 && self.kl_weight.is_finite()) {
            return bad("the KL weight must be a non-negative number");
        }
        if self.kl_weight > 0.0 && self.objective != Objective::NextToken {
            return bad("the KL weight is a term of the next-token objective");
        }
        self.objective.validate()
    }
}

/// What a checkpoint records about the run, besides weights and optimizer moments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed; the next batch index is `step × grad_accum`.
    pub step: u64,
    /// Tokens fed to the model so far.
    pub tokens: u64,
    pub config: TrainConfig,
    /// The checkpoint this run started from (fine-tuning), if any.
    pub parent: Option<PathBuf>,
    pub train_loss: Option<f64>,
    pub val_loss: Option<f64>,
    /// Microseconds spent in training steps (not validation or checkpoints).
    pub train_us: u64,
    pub device: String,
    /// The objective's statistics over the last reported steps ([`Objective::stat_names`]).
    #[serde(default)]
    pub train_stats: BTreeMap<String, f64>,
}

/// Reported to the caller after every step.
#[derive(Clone, Debug)]
pub struct Progress {
    pub step: u64,
    pub max_steps: u64,
    /// Mean training loss over the steps since the last report (every `log_interval`).
    pub loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: Option<f64>,
    /// Over the steps since the last report.
    pub tokens_per_s: Option<f64>,
    pub mfu: Option<f64>,
    /// Set on steps that ran a validation pass.
    pub val_loss: Option<f64>,
    /// Set on steps that wrote a checkpoint.
    pub checkpoint: Option<PathBuf>,
    /// The objective's statistics, averaged like `loss` (preference runs: rewards, margin, accuracy).
    pub stats: BTreeMap<String, f64>,
}

pub struct Outcome {
    pub state: TrainerState,
    pub checkpoint: PathBuf,
    /// Stopped by the caller before `max_steps`.
    pub stopped: bool,
    /// Over the whole run's training steps.
    pub tokens_per_s: f64,
    pub mfu: f64,
}

pub struct Trainer {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    optimizer: AdamW,
    state: TrainerState,
    run: RunDir,
    /// Peak FLOP/s of the device, for MFU.
    peak_flops: f64,
    /// The frozen model the KL term pulls toward when `model` has no adapters (with
    /// adapters, the base under them is that model).
    teacher: Option<Gpt>,
}

impl Trainer {
    /// A new run in `run_dir`, which must not hold checkpoints already.
    pub fn start(
        model: Gpt,
        tokenizer: Tokenizer,
        config: TrainConfig,
        parent: Option<PathBuf>,
        run_dir: &Path,
    ) -> Result<Trainer, MlError> {
        config.validate()?;
        let run = RunDir::new(run_dir);
        if let Some(existing) = run.latest()? {
            return Err(MlError::Checkpoint(format!(
                "{} already holds a run (latest {}): resume it or choose another directory",
                run_dir.display(),
                existing.display()
            )));
        }
        check_vocab(&model, &tokenizer)?;
        let optimizer = AdamW::new(model.trainable(), config.adamw);
        let state = TrainerState {
            step: 0,
            tokens: 0,
            config,
            parent,
            train_loss: None,
            val_loss: None,
            train_us: 0,
            device: format!("{:?}", model.device()),
            train_stats: BTreeMap::new(),
        };
        Ok(Trainer::assemble(model, tokenizer, optimizer, state, run))
    }

    /// Picks a run up at its latest checkpoint: weights, optimizer moments and step.
    pub fn resume(run_dir: &Path, device: Device) -> Result<Trainer, MlError> {
        let run = RunDir::new(run_dir);
        let dir = run.latest()?.ok_or_else(|| {
            MlError::Checkpoint(format!("{} has no checkpoint to resume", run_dir.display()))
        })?;
        let (model, tokenizer) = checkpoint::load(&dir, device)?;
        let mut state: TrainerState = checkpoint::read_json(&dir.join(checkpoint::STATE))?;
        state.device = format!("{device:?}");
        let mut optimizer = AdamW::new(model.trainable(), state.config.adamw);
        optimizer.load(&dir.join(checkpoint::OPTIMIZER), state.step)?;
        Ok(Trainer::assemble(model, tokenizer, optimizer, state, run))
    }

    fn assemble(
        model: Gpt,
        tokenizer: Tokenizer,
        optimizer: AdamW,
        state: TrainerState,
        run: RunDir,
    ) -> Trainer {
        let peak_flops = quark_plan::device(crate::device::peak_name(model.device()))
            .map(|d| d.peak_flops)
            .unwrap_or(f64::NAN);
        Trainer {
            model,
            tokenizer,
            optimizer,
            state,
            run,
            peak_flops,
            teacher: None,
        }
    }

    /// The frozen model the KL term pulls a fully fine-tuned model toward, or the teacher a
    /// student distils.
    pub fn with_teacher(mut self, teacher: Gpt) -> Trainer {
        self.teacher = Some(teacher);
        self
    }

    /// The loss of one micro-batch under the run's objective.
    fn objective(&self, batch: &Batch) -> Result<Step, MlError> {
        match &self.state.config.objective {
            Objective::NextToken => Ok(Step {
                loss: self.next_token(batch)?,
                stats: None,
            }),
            Objective::Dpo(config) => align::dpo_step(&self.model, batch, config),
            Objective::Reward(config) => align::reward_step(&self.model, batch, config),
            Objective::Rloo(config) => crate::rloo::rloo_step(&self.model, batch, config),
            Objective::Distill(config) => {
                let teacher = self.teacher.as_ref().ok_or_else(|| {
                    MlError::Config("distillation needs the teacher (Trainer::with_teacher)".into())
                })?;
                crate::distill::distill_step(&self.model, teacher, batch, config)
            }
        }
    }

    /// Next-token cross-entropy, plus the weighted KL(base ‖ model) on the rehearsal rows.
    /// The base's logits are computed once per rehearsal window, without gradients.
    fn next_token(&self, batch: &Batch) -> Result<Tensor, MlError> {
        let context = batch.context();
        let logits = self.model.forward(&batch.input, &context, None, true)?;
        let vocab = self.model.config.vocab_size;
        let ce = logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
            &batch.target.view([-1]),
            None,
            tch::Reduction::Mean,
            crate::gpt::IGNORE,
            0.0,
        );
        let weight = self.state.config.kl_weight;
        let rows = batch.input.size()[0] - batch.text_from.unwrap_or(0);
        let Some(from) = batch.text_from.filter(|_| weight > 0.0 && rows > 0) else {
            return Ok(ce);
        };
        let narrow = |t: &Tensor| t.narrow(0, from, rows);
        let (input, positions, mask) = (
            narrow(&batch.input),
            batch.positions.as_ref().map(narrow),
            batch.mask.as_ref().map(narrow),
        );
        let base_context = crate::gpt::Context {
            positions: positions.as_ref(),
            mask: mask.as_ref(),
            base_only: true,
        };
        let base = tch::no_grad(|| match &self.teacher {
            Some(teacher) => teacher.forward(&input, &base_context, None, false),
            None if self.model.adapters().is_some() => {
                self.model.forward(&input, &base_context, None, false)
            }
            None => Err(MlError::Config(
                "a KL weight needs adapters or a teacher model to pull toward".into(),
            )),
        })?;
        let base = base.log_softmax(-1, Kind::Float);
        let own = narrow(&logits).log_softmax(-1, Kind::Float);
        let kl = (base.exp() * (&base - own))
            .sum_dim_intlist(-1, false, Kind::Float)
            .mean(Kind::Float);
        Ok(ce + kl * weight)
    }

    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Training FLOPs per token (6N plus attention), as the planner counts them.
    fn flops_per_token(&self) -> f64 {
        self.model.config.shape().training_flops_per_token()
    }

    /// Trains to `max_steps`, or until `on_progress` breaks (a checkpoint is written either way).
    pub fn run(
        &mut self,
        data: &dyn Batches,
        validation: Option<&[Batch]>,
        mut on_progress: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<Outcome, MlError> {
        self.run_observed(data, validation, |progress, _| Ok(on_progress(progress)))
    }

    /// [`Trainer::run`], with the model after each step shown to `on_step` (to measure it or
    /// keep a copy of its weights).
    pub fn run_observed(
        &mut self,
        data: &dyn Batches,
        validation: Option<&[Batch]>,
        mut on_step: impl FnMut(&Progress, &Gpt) -> Result<ControlFlow<()>, MlError>,
    ) -> Result<Outcome, MlError> {
        let config = self.state.config.clone();
        let device = self.model.device();
        let tokens_per_step = (data.tokens_per_batch() as u64) * config.grad_accum;
        let periodic_val: Option<&[Batch]> = validation.map(|v| match config.eval_windows {
            Some(windows) => {
                let per_batch = v.first().map_or(1, |b| b.input.size()[0] as usize).max(1);
                &v[..windows.div_ceil(per_batch).min(v.len())]
            }
            None => v,
        });
        let mut window = Window::new(device);
        let mut stopped = false;
        let mut saved: Option<(u64, PathBuf)> = None;
        while self.state.step < config.max_steps {
            let lr = config.schedule.lr(self.state.step);
            let started = Instant::now();
            let (grad_norm, loss, stats) = self.step(data, lr)?;
            window.add(&loss, stats.as_ref());
            self.state.tokens += tokens_per_step;
            let report = self.state.step.is_multiple_of(config.log_interval)
                || self.state.step == config.max_steps;
            let mut progress = Progress {
                step: self.state.step,
                max_steps: config.max_steps,
                loss: None,
                lr,
                grad_norm: None,
                tokens_per_s: None,
                mfu: None,
                val_loss: None,
                checkpoint: None,
                stats: BTreeMap::new(),
            };
            if report {
                // Reading the loss waits for the device: only here, not every step.
                let (loss, stats) = window.read(config.objective.stat_names());
                if !loss.is_finite() {
                    return Err(MlError::Diverged(self.state.step, loss));
                }
                progress.loss = Some(loss);
                progress.grad_norm = grad_norm.map(|n| n.double_value(&[]));
                self.state.train_loss = Some(loss);
                self.state.train_stats = stats.clone();
                progress.stats = stats;
            }
            let elapsed = started.elapsed();
            window.elapsed += elapsed;
            self.state.train_us += elapsed.as_micros() as u64;
            if report {
                let tokens_per_s =
                    (window.steps * tokens_per_step) as f64 / window.elapsed.as_secs_f64();
                progress.tokens_per_s = Some(tokens_per_s);
                progress.mfu = Some(tokens_per_s * self.flops_per_token() / self.peak_flops);
                window = Window::new(device);
            }
            let last = self.state.step == config.max_steps;
            if let Some(val) = periodic_val
                && config.eval_interval > 0
                && self.state.step.is_multiple_of(config.eval_interval)
                && !last
            {
                progress.val_loss = Some(evaluate(&self.model, val)?);
            }
            if config.checkpoint_interval > 0
                && self.state.step.is_multiple_of(config.checkpoint_interval)
                && !last
            {
                let dir = self.checkpoint()?;
                saved = Some((self.state.step, dir.clone()));
                progress.checkpoint = Some(dir);
            }
            stopped = on_step(&progress, &self.model)?.is_break() && !last;
            if last || stopped {
                break;
            }
        }
        if !stopped && let Some(val) = validation {
            let loss = evaluate(&self.model, val)?;
            self.state.val_loss = Some(loss);
        }
        let checkpoint = match saved {
            Some((step, dir)) if step == self.state.step => dir,
            _ => self.checkpoint()?,
        };
        let tokens_per_s = self.state.tokens as f64 / (self.state.train_us as f64 / 1e6);
        Ok(Outcome {
            state: self.state.clone(),
            checkpoint,
            stopped,
            tokens_per_s,
            mfu: tokens_per_s * self.flops_per_token() / self.peak_flops,
        })
    }

    /// One optimizer step on the next `grad_accum` micro-batches: the gradient norm (when
    /// clipping), the step's loss and the objective's statistics, all left on the device.
    #[allow(clippy::type_complexity)]
    fn step(
        &mut self,
        data: &dyn Batches,
        lr: f64,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>), MlError> {
        let config = &self.state.config;
        let (step, accum, device) = (self.state.step, config.grad_accum, self.model.device());
        // Dropout draws from torch's process-wide generator: hold it for the whole step.
        let _generator = (self.model.config.dropout > 0.0).then(|| {
            let guard = TORCH_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed((config.seed as i64).wrapping_add(step as i64));
            guard
        });
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        let mut stats: Option<Tensor> = None;
        for micro in 0..accum {
            let batch = data.batch_from(step * accum + micro, device, &self.model)?;
            let micro = self.objective(&batch)?;
            (&micro.loss / accum as f64).backward();
            loss += micro.loss.detach() / accum as f64;
            if let Some(s) = micro.stats {
                let s = s / accum as f64;
                stats = Some(match stats {
                    Some(total) => total + s,
                    None => s,
                });
            }
        }
        let clip = self.state.config.grad_clip;
        let grad_norm = (clip > 0.0).then(|| self.optimizer.clip_grad_norm(clip));
        self.optimizer.step(lr);
        self.optimizer.zero_grad();
        self.state.step += 1;
        Ok((grad_norm, loss, stats))
    }

    fn checkpoint(&self) -> Result<PathBuf, MlError> {
        self.run.save(
            self.state.step,
            &self.model,
            &self.tokenizer,
            Some(&self.optimizer),
            &self.state,
        )
    }
}

/// The steps since the last report: their summed loss and statistics (on the device) and time.
struct Window {
    loss: Tensor,
    stats: Option<Tensor>,
    steps: u64,
    elapsed: Duration,
}

impl Window {
    fn new(device: Device) -> Window {
        Window {
            loss: Tensor::zeros([], (Kind::Float, device)),
            stats: None,
            steps: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn add(&mut self, loss: &Tensor, stats: Option<&Tensor>) {
        self.loss += loss;
        if let Some(s) = stats {
            self.stats = Some(match self.stats.take() {
                Some(total) => total + s,
                None => s.shallow_clone(),
            });
        }
        self.steps += 1;
    }

    /// The mean loss and statistics per step.
    fn read(&self, names: &[&str]) -> (f64, BTreeMap<String, f64>) {
        let n = self.steps.max(1) as f64;
        let stats = match &self.stats {
            Some(s) => {
                let values = Vec::<f64>::try_from(s.to_kind(Kind::Double).to_device(Device::Cpu))
                    .unwrap_or_default();
                names
                    .iter()
                    .zip(values)
                    .map(|(name, v)| (name.to_string(), v / n))
                    .collect()
            }
            None => BTreeMap::new(),
        };
        (self.loss.double_value(&[]) / n, stats)
    }
}

fn check_vocab(model: &Gpt, tokenizer: &Tokenizer) -> Result<(), MlError> {
    let vocab = tokenizer.get_vocab_size(true) as i64;
    if vocab > model.config.vocab_size {
        return Err(MlError::Config(format!(
            "the tokenizer has {vocab} tokens but the model's vocabulary is {}",
            model.config.vocab_size
        )));
    }
    Ok(())
}

/// Mean loss per scored token over `batches`, without dropout or gradients.
pub fn evaluate(model: &Gpt, batches: &[Batch]) -> Result<f64, MlError> {
    evaluate_with(model, batches, false)
}

/// [`evaluate`]; with `base_only`, of the base under the model's adapters.
pub fn evaluate_with(model: &Gpt, batches: &[Batch], base_only: bool) -> Result<f64, MlError> {
    tch::no_grad(|| {
        let (mut total, mut count) = (0.0, 0i64);
        for batch in batches {
            let n = batch.scored_tokens();
            if n == 0 {
                continue;
            }
            let context = crate::gpt::Context {
                base_only,
                ..batch.context()
            };
            let loss = model.loss(&batch.input, &batch.target, &context, false)?;
            total += loss.double_value(&[]) * n as f64;
            count += n;
        }
        if count == 0 {
            return Err(MlError::Empty("no scored tokens to evaluate".into()));
        }
        Ok(total / count as f64)
    })
}
