//! The trainer service, a thin adapter over the ML core:
//! - dataset.prepared (pretrain) while there is no champion → pre-train a model sized for the
//!   device on it, with the tokenizer the curator trained on it;
//! - retrain.requested → fine-tune the base model (the champion unless named) on the SFT
//!   datasets it names. A request that names none is for the augmenter, which answers it
//!   with one that does.
//!
//! Each emits model.trained with the model's lineage.
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

use async_trait::async_trait;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{
    Artifact, DatasetKind, DatasetPrepared, Event, EventHeader, EventKind, Id, ModelShape,
    ModelTrained, RetrainRequested, RunKind,
};
use quark_lineage::{Follower, Lineage, Model};
use quark_ml::chat;
use quark_ml::checkpoint;
use quark_ml::corpus;
use quark_ml::data::{Batch, Batches, Mixture, Packed, Windows, validation_batches};
use quark_ml::gpt::{Gpt, GptConfig};
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::shards::{self, Shard};
use quark_ml::tokenizer;
use quark_ml::train::{TrainConfig, Trainer};
use quark_runtime::ArtifactStore;
use quark_runtime::config::TrainerSettings;
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
    shutdown: CancellationToken,
    /// One job at a time per instance.
    busy: tokio::sync::Mutex<()>,
}

/// What a job trains on.
enum Plan {
    Pretrain {
        dataset: Box<DatasetPrepared>,
        tokenizer_id: Id,
        tokenizer: Artifact,
    },
    Finetune {
        base: Model,
        datasets: Vec<DatasetPrepared>,
        /// Pre-training data mixed into the fine-tuning, so the model learns the new examples
        /// without forgetting the rest.
        rehearsal: Vec<DatasetPrepared>,
    },
}

impl TrainerService {
    pub fn new(
        store: Arc<ArtifactStore>,
        db: DatabaseConnection,
        data_dir: &Path,
        settings: TrainerSettings,
        shutdown: CancellationToken,
    ) -> Self {
        TrainerService {
            store,
            db,
            work: data_dir.join("trainer"),
            settings,
            shutdown,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    async fn plan(&self, event: &Event) -> Result<Option<Plan>, HandlerError> {
        let db = &self.db;
        match event {
            Event::DatasetPrepared(d) if d.kind == DatasetKind::Pretrain => {
                let champion = LINEAGE
                    .champion_promotion(db)
                    .await
                    .map_err(HandlerError::transient)?;
                if d.train_examples == 0 {
                    info!(dataset = %d.dataset_id, "nothing was kept: nothing to pre-train on");
                    return Ok(None);
                }
                if champion.is_some() {
                    info!(dataset = %d.dataset_id, "a champion exists: new pre-training data waits for a full retrain");
                    return Ok(None);
                }
                let tokenizer = LINEAGE
                    .tokenizer_for(db, d.dataset_id)
                    .await
                    .map_err(HandlerError::transient)?
                    .ok_or_else(|| not_yet(format!("the tokenizer of dataset {}", d.dataset_id)))?;
                Ok(Some(Plan::Pretrain {
                    dataset: Box::new(d.clone()),
                    tokenizer_id: tokenizer.tokenizer_id,
                    tokenizer: tokenizer.artifact,
                }))
            }
            Event::RetrainRequested(r) if r.is_for_policy() => Ok(None),
            Event::RetrainRequested(r) => Ok(Some(self.finetune_plan(r).await?)),
            _ => Ok(None),
        }
    }

    async fn finetune_plan(&self, request: &RetrainRequested) -> Result<Plan, HandlerError> {
        let db = &self.db;
        if request.run_kind != RunKind::Sft {
            return Err(HandlerError::permanent(format!(
                "this trainer fine-tunes with sft; {:?} runs are not supported",
                request.run_kind
            )));
        }
        let base_id = match request.base_model_id {
            Some(id) => id,
            None => {
                LINEAGE
                    .champion_promotion(db)
                    .await
                    .map_err(HandlerError::transient)?
                    .ok_or_else(|| not_yet("a champion".into()))?
                    .model_id
            }
        };
        let base = LINEAGE
            .model(db, base_id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| not_yet(format!("model {base_id}")))?;
        let mut datasets = Vec::new();
        for id in &request.dataset_ids {
            datasets.push(
                LINEAGE
                    .dataset(db, *id)
                    .await
                    .map_err(HandlerError::transient)?
                    .ok_or_else(|| not_yet(format!("dataset {id}")))?,
            );
        }
        datasets.retain(|d| d.kind == DatasetKind::Sft);
        if datasets.is_empty() {
            return Err(HandlerError::permanent("no SFT dataset to fine-tune on"));
        }
        let rehearsal = LINEAGE
            .datasets_of_kind(db, DatasetKind::Pretrain)
            .await
            .map_err(HandlerError::transient)?;
        Ok(Plan::Finetune {
            base,
            datasets,
            rehearsal,
        })
    }

    fn shape(&self, device: tch::Device, vocab_size: i64) -> GptConfig {
        let s = &self.settings;
        let gpu = device.is_cuda();
        let or = |value: i64, cpu: i64, cuda: i64| match value {
            0 if gpu => cuda,
            0 => cpu,
            v => v,
        };
        GptConfig {
            vocab_size,
            block_size: or(s.block_size, 128, 256),
            n_layer: or(s.n_layer, 4, 6),
            n_head: or(s.n_head, 4, 6),
            n_embd: or(s.n_embd, 128, 384),
            dropout: 0.0,
        }
    }

    fn train_config(&self, device: tch::Device, finetune: bool) -> TrainConfig {
        let s = &self.settings;
        let steps = match (finetune, s.pretrain_steps) {
            (true, _) => s.finetune_steps,
            (false, 0) if device.is_cuda() => 3000,
            (false, 0) => 600,
            (false, n) => n,
        };
        let lr = if finetune { s.finetune_lr } else { s.lr };
        TrainConfig {
            batch_size: s.batch_size,
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
        }
    }

    /// Runs (or resumes, or recalls) the job for `event` and returns its model.trained.
    async fn job(&self, event: &Event, plan: Plan) -> Result<ModelTrained, HandlerError> {
        let cause = event.header();
        let dir = self.work.join(cause.event_id.to_string());
        if let Ok(text) = std::fs::read_to_string(dir.join(OUTCOME)) {
            info!(job = %dir.display(), "already trained; re-sending its model.trained");
            return serde_json::from_str(&text).map_err(HandlerError::permanent);
        }
        let _one_at_a_time = self.busy.lock().await;
        let device =
            quark_ml::device::select(&self.settings.device).map_err(HandlerError::permanent)?;
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&dir).map_err(HandlerError::transient)?;
        let resuming = checkpoint::RunDir::new(&run_dir)
            .latest()
            .map_err(HandlerError::transient)?
            .is_some();
        let started = Instant::now();
        let resume = || Trainer::resume(&run_dir, device).map_err(HandlerError::transient);
        let (run_kind, parent, dataset_ids, tokenizer_id, mut trainer, data) = match &plan {
            Plan::Pretrain {
                dataset,
                tokenizer_id,
                tokenizer,
            } => {
                let trainer = if resuming {
                    resume()?
                } else {
                    let path = self
                        .store
                        .verified_path(tokenizer)
                        .map_err(HandlerError::transient)?;
                    let tokenizer = tokenizer::load(&path).map_err(HandlerError::permanent)?;
                    let shape = self.shape(device, tokenizer.get_vocab_size(true) as i64);
                    let model = Gpt::new(shape, device, self.settings.seed)
                        .map_err(HandlerError::permanent)?;
                    let config = self.train_config(device, false);
                    Trainer::start(model, tokenizer, config, None, &run_dir)
                        .map_err(HandlerError::permanent)?
                };
                let data = self.pretrain_data(dataset, &trainer, &dir)?;
                let ids = vec![dataset.dataset_id];
                (RunKind::Pretrain, None, ids, *tokenizer_id, trainer, data)
            }
            Plan::Finetune {
                base,
                datasets,
                rehearsal,
            } => {
                let trainer = if resuming {
                    resume()?
                } else {
                    let base_dir = dir.join("base");
                    let base_dir = self
                        .store
                        .get_dir(&base.checkpoint, &base_dir)
                        .await
                        .map_err(HandlerError::transient)?;
                    let (model, tokenizer) =
                        checkpoint::load(&base_dir, device).map_err(HandlerError::permanent)?;
                    let config = self.train_config(device, true);
                    Trainer::start(model, tokenizer, config, Some(base_dir), &run_dir)
                        .map_err(HandlerError::permanent)?
                };
                let data = self.sft_data(datasets, rehearsal, &trainer, &dir)?;
                let ids = datasets.iter().map(|d| d.dataset_id).collect();
                let parent = Some(base.model_id);
                (RunKind::Sft, parent, ids, base.tokenizer_id, trainer, data)
            }
        };
        info!(job = %dir.display(), ?run_kind, resuming, step = trainer.state().step, parameters = trainer.model.parameters(), device = ?device, "training");
        let shutdown = self.shutdown.clone();
        let outcome = tokio::task::block_in_place(|| {
            let validation = (!data.validation.is_empty()).then_some(data.validation.as_slice());
            trainer.run(data.batches.as_ref(), validation, |progress| {
                if let Some(loss) = progress.loss {
                    info!(
                        step = progress.step,
                        max_steps = progress.max_steps,
                        loss,
                        tokens_per_s = progress.tokens_per_s,
                        "train"
                    );
                }
                if shutdown.is_cancelled() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
        })
        .map_err(HandlerError::permanent)?;
        if outcome.stopped {
            return Err(HandlerError::transient(format!(
                "stopped by shutdown at step {}; the job resumes from its checkpoint",
                outcome.state.step
            )));
        }
        let checkpoint = self
            .store
            .put_dir(&outcome.checkpoint, MODEL_FILES)
            .await
            .map_err(HandlerError::transient)?;
        let state = &outcome.state;
        let config = &trainer.model.config;
        let mut metrics = HashMap::from([
            ("tokens_per_s".to_string(), outcome.tokens_per_s),
            ("mfu".to_string(), outcome.mfu),
        ]);
        metrics.extend(state.train_loss.map(|l| ("train_loss".to_string(), l)));
        metrics.extend(state.val_loss.map(|l| ("val_loss".to_string(), l)));
        let c = &state.config;
        let trained = ModelTrained {
            header: EventHeader::caused_by(cause, NAME, "model"),
            model_id: Id::derived(cause.event_id, "model"),
            run_kind,
            parent_model_id: parent,
            dataset_ids,
            tokenizer_id,
            shape: ModelShape {
                n_layer: config.n_layer as i32,
                n_head: config.n_head as i32,
                n_embd: config.n_embd as i32,
                block_size: config.block_size as i32,
                vocab_size: config.vocab_size as i32,
                parameters: trainer.model.parameters(),
            },
            hyperparameters: HashMap::from([
                ("steps".to_string(), c.max_steps.to_string()),
                ("batch_size".to_string(), c.batch_size.to_string()),
                ("lr".to_string(), c.schedule.max_lr.to_string()),
                ("min_lr".to_string(), c.schedule.min_lr.to_string()),
                (
                    "warmup_steps".to_string(),
                    c.schedule.warmup_steps.to_string(),
                ),
                ("weight_decay".to_string(), c.adamw.weight_decay.to_string()),
                ("seed".to_string(), c.seed.to_string()),
            ]),
            checkpoint,
            metrics,
            device: state.device.clone(),
            steps: state.step as i64,
            tokens: state.tokens as i64,
            duration_ms: if resuming {
                (state.train_us / 1000) as i64
            } else {
                started.elapsed().as_millis() as i64
            },
        };
        let outcome_file = dir.join(OUTCOME);
        std::fs::write(
            &outcome_file,
            serde_json::to_vec(&trained).map_err(HandlerError::permanent)?,
        )
        .map_err(HandlerError::transient)?;
        // The optimizer state is no longer needed once the model is published.
        let _ = std::fs::remove_dir_all(&run_dir);
        info!(job = %dir.display(), model = %trained.model_id, steps = trained.steps, duration_ms = trained.duration_ms, "trained");
        Ok(trained)
    }

    fn documents(&self, artifact: &Artifact) -> Result<Vec<String>, HandlerError> {
        let path = self
            .store
            .verified_path(artifact)
            .map_err(HandlerError::transient)?;
        quark_curate::store::read_texts(&path).map_err(HandlerError::permanent)
    }

    /// A pre-training dataset's training and held-out documents, split as the evaluator
    /// splits them.
    fn splits(
        &self,
        dataset: &DatasetPrepared,
    ) -> Result<(Vec<String>, Vec<String>), HandlerError> {
        let validation = match &dataset.validation {
            Some(v) => self.documents(v)?,
            None => vec![],
        };
        let train = self.documents(&dataset.train)?;
        Ok(corpus::hold_out(train, validation, corpus::HELD_OUT))
    }

    /// The dataset's splits encoded into token shards in the job directory.
    fn pretrain_data(
        &self,
        dataset: &DatasetPrepared,
        trainer: &Trainer,
        dir: &Path,
    ) -> Result<Data, HandlerError> {
        let (train, validation) = self.splits(dataset)?;
        let (train_path, val_path) = (dir.join("train.tok"), dir.join("val.tok"));
        let tokenizer = &trainer.tokenizer;
        shards::write(tokenizer, &train, &train_path).map_err(HandlerError::permanent)?;
        shards::write(tokenizer, &validation, &val_path).map_err(HandlerError::permanent)?;
        let block = trainer.model.config.block_size as usize;
        let train = Shard::open(&train_path).map_err(HandlerError::permanent)?;
        let val = Shard::open(&val_path).map_err(HandlerError::permanent)?;
        let (batch, seed) = (self.settings.batch_size, self.settings.seed);
        Ok(Data {
            batches: Box::new(
                Windows::new(train, batch, block, seed).map_err(HandlerError::permanent)?,
            ),
            // A validation split shorter than one window is not scored.
            validation: validation_batches(&val, block, batch, None, trainer.model.device())
                .unwrap_or_default(),
        })
    }

    /// Conversations of the SFT datasets, packed: training from the train splits, validation
    /// from the validation splits.
    fn sft_data(
        &self,
        datasets: &[DatasetPrepared],
        rehearsal: &[DatasetPrepared],
        trainer: &Trainer,
        dir: &Path,
    ) -> Result<Data, HandlerError> {
        let (tokenizer, model) = (&trainer.tokenizer, &trainer.model);
        let examples = |artifact: &Artifact| -> Result<Vec<quark_ml::data::Example>, HandlerError> {
            self.documents(artifact)?
                .iter()
                .map(|text| {
                    let messages = chat::parse_record(text).map_err(HandlerError::permanent)?;
                    chat::render(tokenizer, &messages).map_err(HandlerError::permanent)
                })
                .collect()
        };
        let (mut train, mut validation) = (vec![], vec![]);
        for dataset in datasets {
            train.extend(examples(&dataset.train)?);
            if let Some(v) = &dataset.validation {
                validation.extend(examples(v)?);
            }
        }
        let block = model.config.block_size as usize;
        let pad = tokenizer.token_to_id(tokenizer::END_OF_TEXT).unwrap_or(0);
        let (rows, seed) = (self.settings.batch_size, self.settings.seed);
        let text_rows = ((rows as f64 * self.settings.rehearsal_share).round() as usize)
            .min(rows.saturating_sub(1));
        let text = match text_rows {
            0 => None,
            _ => self.rehearsal_text(rehearsal, tokenizer, block, dir)?,
        };
        let batches: Box<dyn Batches + Send> = match text {
            Some(shard) => {
                let examples = Packed::new(&train, rows - text_rows, block, pad, seed)
                    .map_err(HandlerError::permanent)?;
                let windows =
                    Windows::new(shard, text_rows, block, seed).map_err(HandlerError::permanent)?;
                Box::new(Mixture::new(examples, windows).map_err(HandlerError::permanent)?)
            }
            None => Box::new(
                Packed::new(&train, rows, block, pad, seed).map_err(HandlerError::permanent)?,
            ),
        };
        let validation = match validation.is_empty() {
            true => vec![],
            false => Packed::new(&validation, rows, block, pad, seed)
                .map(|p| p.sequential(model.device()))
                .unwrap_or_default(),
        };
        Ok(Data {
            batches,
            validation,
        })
    }

    /// The pre-training text (its training split, at most `REHEARSAL_BYTES`) as a token shard
    /// in the job directory; none when there is too little for a window.
    fn rehearsal_text(
        &self,
        rehearsal: &[DatasetPrepared],
        tokenizer: &quark_ml::Tokenizer,
        block: usize,
        dir: &Path,
    ) -> Result<Option<Shard>, HandlerError> {
        let mut text = Vec::new();
        let mut bytes = 0;
        // Datasets past the bound are not read at all.
        for dataset in rehearsal {
            if bytes >= REHEARSAL_BYTES {
                break;
            }
            for doc in self.splits(dataset)?.0 {
                if bytes >= REHEARSAL_BYTES {
                    break;
                }
                bytes += doc.len();
                text.push(doc);
            }
        }
        if text.is_empty() {
            return Ok(None);
        }
        let path = dir.join("rehearsal.tok");
        let tokens = shards::write(tokenizer, &text, &path).map_err(HandlerError::permanent)?;
        if tokens <= block + 1 {
            info!(
                tokens,
                "too little pre-training text to rehearse: fine-tuning on feedback alone"
            );
            return Ok(None);
        }
        Shard::open(&path)
            .map(Some)
            .map_err(HandlerError::permanent)
    }
}

/// Bounds the pre-training text tokenised for rehearsal.
const REHEARSAL_BYTES: usize = 8 << 20;

struct Data {
    batches: Box<dyn Batches + Send>,
    validation: Vec<Batch>,
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
        let Some(plan) = self.plan(event).await? else {
            return Ok(vec![]);
        };
        Ok(vec![Event::ModelTrained(self.job(event, plan).await?)])
    }
}
