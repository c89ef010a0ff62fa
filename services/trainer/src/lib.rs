//! The trainer service, a thin adapter over the ML core:
//! - dataset.prepared (pretrain) while there is no champion → pre-train a model sized for the
//!   device on it, with the tokenizer the curator trained on it;
//! - retrain.requested for a pretrain run → the same from scratch on the dataset it names (the
//!   registry asks for one when the champion learnt from a forgotten document);
//! - retrain.requested → fine-tune the base model (the champion unless named) on the SFT
//!   datasets it names: LoRA adapters on the frozen base, pulled toward it on rehearsal text,
//!   and the checkpoint that learnt the corrections best inside the gate's limits handed on
//!   ([`tuning`]). A correction is never trained twice on the same base. A request that
//!   names none is for the augmenter, which answers it with one that does.
//!
//! - retrain.requested for a dpo or reward run → align the base (the champion unless named) on
//!   the preference datasets it names: DPO against the base's own log-probabilities, or a
//!   Bradley–Terry reward model on its body ([`align`]). A pair is never trained twice into
//!   the same model version by the same kind of run.
//!
//! - retrain.requested for a quantize run → the base's weights to int8 ([`quantize`]).
//!
//! Each emits model.trained with the model's lineage. No job trains on a document forgotten
//! (document.forgotten) before it was planned.
//!
//! What a job refers to (the dataset's tokenizer, the champion and its checkpoint, the
//! datasets named) comes from the trainer's own projection, [`LINEAGE`], which [`follower`]
//! folds from the topics as its own consumer. Something not folded yet is a transient error:
//! the runner retries the job until the follower has caught up.
//!
//! Jobs run one at a time per instance; instances in one consumer group share them. A job
//! lives in `<data_dir>/trainer/<job id>` (the job id derives from the event), checkpoints
//! every `checkpoint_interval` steps, and a redelivered job resumes from its last checkpoint.
//! A finished job keeps its model.trained in `outcome.json`, so a redelivery after the event
//! was sent re-sends the same event (same id) instead of training again.

mod align;
mod data;
mod distill;
mod hyperparameters;
mod plan;
mod progress;
mod quantize;
mod rloo;
mod tuning;

use async_trait::async_trait;
use data::Data;
use plan::Plan;
use quark_events::bus::{Handler, HandlerError, Publisher};
use quark_events::{Event, EventHeader, EventKind, Id, ModelShape, ModelTrained, RunKind};
use quark_lineage::{Follower, Lineage};
use quark_ml::checkpoint;
use quark_ml::gpt::{Gpt, GptConfig, Layout};
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::probe::Selector;
use quark_ml::tokenizer;
use quark_ml::train::{Outcome, TrainConfig, Trainer};
use quark_runtime::ArtifactStore;
use quark_runtime::config::{EvaluateSettings, TrainerSettings};
use sea_orm::DatabaseConnection;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub const NAME: &str = "trainer";
/// The trainer's own projection of datasets, tokenizers, models and the champion.
pub const LINEAGE: Lineage = Lineage::new(NAME);

/// The consumer that keeps [`LINEAGE`] (its own group, so a long job never holds it back).
pub fn follower() -> Follower {
    Follower {
        name: format!("{NAME}-lineage"),
        lineage: LINEAGE,
    }
}

fn not_yet(what: String) -> HandlerError {
    HandlerError::Transient(format!("{what} is not known here yet"))
}
/// The checkpoint files a model is published with (the optimizer state stays with the job).
pub const MODEL_FILES: &[&str] = &[
    checkpoint::CONFIG,
    checkpoint::WEIGHTS,
    checkpoint::TOKENIZER,
    checkpoint::STATE,
];
const OUTCOME: &str = "outcome.json";

pub struct TrainerService {
    store: Arc<ArtifactStore>,
    db: DatabaseConnection,
    work: PathBuf,
    settings: TrainerSettings,
    /// The evaluator's gate: fine-tuning chooses a checkpoint inside its limits.
    gate: EvaluateSettings,
    shutdown: CancellationToken,
    /// One job at a time per instance.
    busy: tokio::sync::Mutex<()>,
    /// Where jobs report their progress (training.progressed), when anywhere.
    progress: Option<Publisher>,
}

/// A job ready to run.
struct Job {
    run_kind: RunKind,
    parent: Option<Id>,
    dataset_ids: Vec<Id>,
    tokenizer_id: Id,
    trainer: Trainer,
    data: Data,
    /// Fine-tuning: measures the run's checkpoints and keeps the one to hand on.
    selector: Option<Selector>,
    /// Alignment: the pairs the trained model is read on.
    readings: Option<align::Readings>,
}

/// A job's run (`<job dir>/run`), resumed from its latest checkpoint when it has one.
struct Run {
    dir: PathBuf,
    device: tch::Device,
    /// A checkpoint is there to resume from.
    resuming: bool,
}

impl Run {
    fn at(job_dir: &Path, device: tch::Device) -> Result<Run, HandlerError> {
        let dir = job_dir.join("run");
        let resuming = checkpoint::RunDir::new(&dir)
            .latest()
            .map_err(HandlerError::transient)?
            .is_some();
        Ok(Run {
            dir,
            device,
            resuming,
        })
    }

    /// The run resumed, or else the one `start` begins in the run's directory.
    fn trainer(
        &self,
        start: impl FnOnce(&Path) -> Result<Trainer, HandlerError>,
    ) -> Result<Trainer, HandlerError> {
        match self.resuming {
            true => Trainer::resume(&self.dir, self.device).map_err(HandlerError::transient),
            false => start(&self.dir),
        }
    }
}

impl TrainerService {
    pub fn new(
        store: Arc<ArtifactStore>,
        db: DatabaseConnection,
        data_dir: &Path,
        settings: TrainerSettings,
        gate: EvaluateSettings,
        shutdown: CancellationToken,
    ) -> Self {
        TrainerService {
            store,
            db,
            work: data_dir.join("trainer"),
            settings,
            gate,
            shutdown,
            busy: tokio::sync::Mutex::new(()),
            progress: None,
        }
    }

    /// Jobs report their progress through `publisher` as training.progressed.
    pub fn with_progress(mut self, publisher: Publisher) -> Self {
        self.progress = Some(publisher);
        self
    }

    fn shape(&self, device: tch::Device, vocab_size: i64) -> Result<GptConfig, HandlerError> {
        let s = &self.settings;
        let gpu = device.is_cuda();
        let or = |value: i64, cpu: i64, cuda: i64| match value {
            0 if gpu => cuda,
            0 => cpu,
            v => v,
        };
        Ok(GptConfig {
            vocab_size,
            // Long enough on the CPU for retrieved passages beside a question.
            block_size: or(s.block_size, 512, 256),
            n_layer: or(s.n_layer, 4, 6),
            n_head: or(s.n_head, 4, 6),
            n_embd: or(s.n_embd, 128, 384),
            dropout: 0.0,
            layout: Layout {
                bias: s.bias,
                activation: s.activation.parse().map_err(HandlerError::permanent)?,
            },
        })
    }

    /// Rows of `block` tokens in one optimizer step: `trainer.batch_size`, or for 0 as many as
    /// make the device's tokens per step (2,048 on a CPU, 4,096 on CUDA).
    fn rows(&self, device: tch::Device, block: i64) -> usize {
        let tokens = if device.is_cuda() { 4096 } else { 2048 };
        match self.settings.batch_size {
            0 => (tokens / block.max(1)).max(1) as usize,
            n => n,
        }
    }

    fn train_config(&self, device: tch::Device, finetune: bool, block: i64) -> TrainConfig {
        let s = &self.settings;
        let steps = match (finetune, s.pretrain_steps) {
            (true, _) => s.finetune_steps,
            (false, 0) if device.is_cuda() => 3000,
            (false, 0) => 600,
            (false, n) => n,
        };
        let lr = if finetune { s.finetune_lr } else { s.lr };
        TrainConfig {
            batch_size: self.rows(device, block),
            grad_accum: 1,
            max_steps: steps,
            schedule: Schedule {
                max_lr: lr,
                min_lr: lr / 10.0,
                // Fine-tuning starts from trained weights: a short warm-up (a sixth) is enough.
                warmup_steps: if finetune {
                    steps / 6
                } else {
                    s.warmup_steps.min(steps / 2)
                },
                decay_steps: steps,
            },
            adamw: AdamWConfig {
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: if finetune { 0.0 } else { 0.1 },
            },
            grad_clip: 1.0,
            eval_interval: 0,
            eval_windows: None,
            checkpoint_interval: s.checkpoint_interval,
            log_interval: 10,
            seed: s.seed,
            kl_weight: if finetune { s.kl_weight } else { 0.0 },
            objective: Default::default(),
        }
    }

    /// Builds the job of `plan` in `dir`: a new run, or the one there resumed.
    async fn setup(
        &self,
        plan: Plan,
        dir: &Path,
        device: tch::Device,
    ) -> Result<Job, HandlerError> {
        let run = Run::at(dir, device)?;
        match plan {
            Plan::Pretrain {
                dataset,
                tokenizer_id,
                tokenizer,
                forgotten,
            } => {
                let trainer = run.trainer(|run_dir| {
                    let path = self
                        .store
                        .verified_path(&tokenizer)
                        .map_err(HandlerError::transient)?;
                    let tokenizer = tokenizer::load(&path).map_err(HandlerError::permanent)?;
                    let shape = self.shape(device, tokenizer.get_vocab_size(true) as i64)?;
                    let config = self.train_config(device, false, shape.block_size);
                    let model = Gpt::new(shape, device, self.settings.seed)
                        .map_err(HandlerError::permanent)?;
                    Trainer::start(model, tokenizer, config, None, run_dir)
                        .map_err(HandlerError::permanent)
                })?;
                let data = self.pretrain_data(&dataset, &trainer, dir, &forgotten)?;
                Ok(Job {
                    run_kind: RunKind::Pretrain,
                    parent: None,
                    dataset_ids: vec![dataset.dataset_id],
                    tokenizer_id,
                    trainer,
                    data,
                    selector: None,
                    readings: None,
                })
            }
            Plan::Align {
                run_kind,
                base,
                judge,
                datasets,
                records,
                pretraining,
                forgotten,
            } => {
                let inputs = align::Inputs {
                    run_kind,
                    base: &base,
                    judge: judge.as_deref(),
                    datasets: &datasets,
                    records: &records,
                    pretraining: &pretraining,
                    forgotten: &forgotten,
                };
                self.align_job(inputs, dir, &run).await
            }
            Plan::Distill {
                base,
                dataset,
                forgotten,
            } => {
                self.distill_job(&base, &dataset, &forgotten, dir, &run)
                    .await
            }
            Plan::Quantize { .. } => Err(HandlerError::permanent(
                "a quantize run trains nothing: it has no training job",
            )),
            Plan::Finetune {
                base,
                datasets,
                rehearsal,
                records,
                forgotten,
            } => {
                let base_dir = self
                    .store
                    .get_dir(&base.checkpoint, &dir.join("base"))
                    .await
                    .map_err(HandlerError::transient)?;
                let load = || checkpoint::load(&base_dir, device).map_err(HandlerError::permanent);
                let mut trainer = run.trainer(|run_dir| {
                    let (mut model, tokenizer) = load()?;
                    tuning::adapt(&mut model, &self.settings)?;
                    let config = self.train_config(device, true, model.config.block_size);
                    Trainer::start(model, tokenizer, config, Some(base_dir.clone()), run_dir)
                        .map_err(HandlerError::permanent)
                })?;
                let data = self.sft_data(&records, &rehearsal, &trainer, dir, &forgotten)?;
                // Without adapters the base is a second copy: the selector's baseline (the
                // model in training may be a resumed one) and the KL term's teacher.
                let frozen = match trainer.model.adapters() {
                    Some(_) => None,
                    None => Some(load()?.0),
                };
                let selector = tuning::selector(
                    &trainer,
                    &data,
                    frozen.as_ref(),
                    &self.settings,
                    &self.gate,
                    dir,
                )?;
                if let Some(teacher) = frozen.filter(|_| self.settings.kl_weight > 0.0) {
                    trainer = trainer.with_teacher(teacher);
                }
                Ok(Job {
                    run_kind: RunKind::Sft,
                    parent: Some(base.model_id),
                    dataset_ids: datasets.iter().map(|d| d.dataset_id).collect(),
                    tokenizer_id: base.tokenizer_id,
                    trainer,
                    data,
                    selector: Some(selector),
                    readings: None,
                })
            }
        }
    }

    /// Trains until done, learnt (fine-tuning) or shut down (an error: the job resumes).
    fn train(&self, job: &mut Job, cause: &EventHeader) -> Result<Outcome, HandlerError> {
        let shutdown = self.shutdown.clone();
        let mut reporter = self.progress.clone().map(|p| {
            let device = job.trainer.state().device.clone();
            progress::Reporter::new(p, cause, job.run_kind, device)
        });
        let data = &job.data;
        let selector = &mut job.selector;
        let run_kind = serde_json::to_value(job.run_kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let validation = (!data.validation.is_empty()).then_some(data.validation.as_slice());
        let outcome = tokio::task::block_in_place(|| {
            job.trainer
                .run_observed(data.batches.as_ref(), validation, |progress, model| {
                    if let Some(r) = reporter.as_mut() {
                        r.report(progress, NAME);
                    }
                    if let Some(loss) = progress.loss {
                        let kind = run_kind.clone();
                        metrics::gauge!("quark_training_loss", "run_kind" => kind.clone())
                            .set(loss);
                        if let Some(rate) = progress.tokens_per_s {
                            metrics::gauge!("quark_training_tokens_per_second", "run_kind" => kind)
                                .set(rate);
                        }
                        info!(
                            step = progress.step,
                            max_steps = progress.max_steps,
                            loss,
                            tokens_per_s = progress.tokens_per_s,
                            "train"
                        );
                    }
                    if shutdown.is_cancelled() {
                        return Ok(ControlFlow::Break(()));
                    }
                    let Some(s) = selector.as_mut() else {
                        return Ok(ControlFlow::Continue(()));
                    };
                    let flow = s.observe(progress.step, progress.max_steps, model)?;
                    if let Some(p) = s.path().last().filter(|p| p.step == progress.step) {
                        let r = &p.reading;
                        info!(
                            step = p.step,
                            perplexity = r.perplexity,
                            reply_loss = r.reply_loss,
                            taught_loss = r.taught_loss,
                            taught_exact = r.taught_exact,
                            fits = p.fits,
                            "probe"
                        );
                    }
                    Ok(flow)
                })
        })
        .map_err(HandlerError::permanent)?;
        if outcome.stopped && self.shutdown.is_cancelled() {
            return Err(HandlerError::transient(format!(
                "stopped by shutdown at step {}; the job resumes from its checkpoint",
                outcome.state.step
            )));
        }
        Ok(outcome)
    }

    /// Runs (or resumes, or recalls) the job for `event` and returns its model.trained.
    async fn job(&self, event: &Event, plan: Plan) -> Result<ModelTrained, HandlerError> {
        let cause = event.header();
        let dir = self.work.join(cause.event_id.to_string());
        if let Some(done) = recall(&dir)? {
            return Ok(done);
        }
        let _one_at_a_time = self.busy.lock().await;
        let device =
            quark_ml::device::select(&self.settings.device).map_err(HandlerError::permanent)?;
        std::fs::create_dir_all(&dir).map_err(HandlerError::transient)?;
        let started = Instant::now();
        let mut job = self.setup(plan, &dir, device).await?;
        let resumed_at = job.trainer.state().step;
        info!(job = %dir.display(), run_kind = ?job.run_kind, resuming = resumed_at > 0, step = resumed_at, parameters = job.trainer.model.parameters(), device = ?device, "training");
        let outcome = self.train(&mut job, cause)?;
        // Before publishing, which merges the adapters away.
        let hyperparameters = self.hyperparameters(&job);
        let mut metrics = HashMap::from([
            ("tokens_per_s".to_string(), outcome.tokens_per_s),
            ("mfu".to_string(), outcome.mfu),
        ]);
        let (checkpoint, adapter, choice) = match job.selector.take() {
            Some(selector) => {
                let selection = selector
                    .finish(&job.trainer.model)
                    .map_err(HandlerError::permanent)?;
                metrics.extend(tuning::metrics(&selection));
                let limits = tuning::limits(&self.settings, &self.gate);
                let choice = tuning::choice(&selection, &limits);
                info!(
                    step = choice.step,
                    fits_gate = choice.fits_gate,
                    taught_exact = selection.chosen.reading.taught_exact,
                    "checkpoint chosen"
                );
                let (checkpoint, adapter) =
                    tuning::publish(&self.store, &mut job.trainer, &dir).await?;
                (checkpoint, adapter, Some(choice))
            }
            // Adapters trained without a selector (RLOO): merged into the servable model.
            None if job.trainer.model.adapters().is_some() => {
                let (checkpoint, adapter) =
                    tuning::publish(&self.store, &mut job.trainer, &dir).await?;
                (checkpoint, adapter, None)
            }
            None => {
                let checkpoint = self
                    .store
                    .put_dir(&outcome.checkpoint, MODEL_FILES)
                    .await
                    .map_err(HandlerError::transient)?;
                (checkpoint, None, None)
            }
        };
        if let Some(readings) = &job.readings {
            let readings = tokio::task::block_in_place(|| align::metrics(&job.trainer, readings))?;
            metrics.extend(readings);
        }
        let state = &outcome.state;
        if job.run_kind == RunKind::Ppo {
            metrics.extend(rloo::metrics(state));
        }
        metrics.extend(state.train_loss.map(|l| ("train_loss".to_string(), l)));
        metrics.extend(state.val_loss.map(|l| ("val_loss".to_string(), l)));
        let trained = ModelTrained {
            header: EventHeader::caused_by(cause, NAME, "model"),
            model_id: Id::derived(cause.event_id, "model"),
            run_kind: job.run_kind,
            parent_model_id: job.parent,
            dataset_ids: job.dataset_ids.clone(),
            tokenizer_id: job.tokenizer_id,
            shape: shape_of(&job.trainer.model),
            hyperparameters,
            checkpoint,
            metrics,
            device: state.device.clone(),
            steps: state.step as i64,
            tokens: state.tokens as i64,
            duration_ms: if resumed_at > 0 {
                (state.train_us / 1000) as i64
            } else {
                started.elapsed().as_millis() as i64
            },
            adapter,
            choice,
        };
        keep(&dir, &trained)?;
        info!(job = %dir.display(), model = %trained.model_id, steps = trained.steps, duration_ms = trained.duration_ms, "trained");
        Ok(trained)
    }
}

/// The model.trained of a job done already (its `outcome.json`), to send again.
fn recall(dir: &Path) -> Result<Option<ModelTrained>, HandlerError> {
    let Ok(text) = std::fs::read_to_string(dir.join(OUTCOME)) else {
        return Ok(None);
    };
    info!(job = %dir.display(), "already trained; re-sending its model.trained");
    serde_json::from_str(&text).map_err(HandlerError::permanent)
}

/// Keeps a job's model.trained in its `outcome.json`; the optimizer state and the copies
/// are no longer needed once the model is published.
fn keep(dir: &Path, trained: &ModelTrained) -> Result<(), HandlerError> {
    let text = serde_json::to_vec(trained).map_err(HandlerError::permanent)?;
    std::fs::write(dir.join(OUTCOME), text).map_err(HandlerError::transient)?;
    for done in ["run", "publish", "base", "judge", "quantized"] {
        let _ = std::fs::remove_dir_all(dir.join(done));
    }
    Ok(())
}

fn shape_of(model: &Gpt) -> ModelShape {
    let config = &model.config;
    ModelShape {
        n_layer: config.n_layer as i32,
        n_head: config.n_head as i32,
        n_embd: config.n_embd as i32,
        block_size: config.block_size as i32,
        vocab_size: config.vocab_size as i32,
        parameters: model.parameters(),
    }
}

#[async_trait]
impl Handler for TrainerService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::DatasetPrepared, EventKind::RetrainRequested]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        let trained = match self.plan(event).await? {
            None => return Ok(vec![]),
            Some(Plan::Quantize { base }) => self.quantize(event, *base).await?,
            Some(plan) => self.job(event, plan).await?,
        };
        Ok(vec![Event::ModelTrained(trained)])
    }
}
