//! What a job trains on, read from the artifact store and tokenised into the job directory:
//! pre-training windows, or packed feedback conversations mixed with rehearsal text.

use crate::{LINEAGE, TrainerService};
use quark_curate::pipeline::Document;
use quark_curate::store::read_documents;
use quark_events::bus::HandlerError;
use quark_events::{Artifact, DatasetPrepared};
use quark_events::{DatasetKind, RunKind};
use quark_lineage::Model;
use quark_ml::chat;
use quark_ml::corpus;
use quark_ml::data::{Batch, Batches, Example, Mixture, Packed, Windows, validation_batches};
use quark_ml::shards::{self, Shard};
use quark_ml::tokenizer;
use quark_ml::train::Trainer;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use tracing::info;

/// The documents no training set may hold (document.forgotten), and those of them a job's
/// reads left out.
#[derive(Debug, Default)]
pub(crate) struct Forgotten {
    ids: HashSet<String>,
    left_out: Mutex<HashSet<String>>,
}

impl Forgotten {
    pub(crate) fn new(ids: HashSet<String>) -> Forgotten {
        Forgotten {
            ids,
            left_out: Mutex::default(),
        }
    }

    /// Forgotten documents the job's data would have held.
    pub(crate) fn left_out(&self) -> usize {
        self.left_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn texts(&self, documents: Vec<Document>) -> Vec<String> {
        let mut left_out = self.left_out.lock().unwrap_or_else(|e| e.into_inner());
        documents
            .into_iter()
            .filter_map(|d| match self.ids.contains(&d.id) {
                true => {
                    left_out.insert(d.id);
                    None
                }
                false => Some(d.text),
            })
            .collect()
    }
}

/// SFT records (one conversation each) a fine-tuning job learns from.
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub(crate) train: Vec<String>,
    pub(crate) validation: Vec<String>,
}

/// The kind of dataset whose records a fine-tuning run of `run_kind` learns from.
pub(crate) fn trains_on(run_kind: RunKind) -> DatasetKind {
    match run_kind {
        RunKind::Dpo | RunKind::Reward => DatasetKind::Preference,
        RunKind::Ppo => DatasetKind::Prompts,
        _ => DatasetKind::Sft,
    }
}

impl TrainerService {
    /// The records a model version has learnt from runs of `run_kind`: those of its own
    /// datasets, and of the datasets its children of that kind were trained on. A correction or
    /// a pair is never trained twice into the same base by the same kind of run.
    pub(crate) async fn learnt_from(
        &self,
        base: &Model,
        run_kind: RunKind,
    ) -> Result<HashSet<String>, HandlerError> {
        let db = &self.db;
        let kind = trains_on(run_kind);
        let mut ids = base.dataset_ids.clone();
        for child in LINEAGE
            .children(db, base.model_id)
            .await
            .map_err(HandlerError::transient)?
            .into_iter()
            .filter(|c| c.run_kind == Some(run_kind))
        {
            ids.extend(child.dataset_ids);
        }
        let mut records = HashSet::new();
        for id in ids {
            let Some(dataset) = LINEAGE
                .dataset(db, id)
                .await
                .map_err(HandlerError::transient)?
            else {
                continue;
            };
            if dataset.kind != kind {
                continue;
            }
            for split in [Some(&dataset.train), dataset.validation.as_ref()]
                .into_iter()
                .flatten()
            {
                let all = self.documents(split, &Forgotten::default())?;
                records.extend(all.iter().map(|r| r.trim().to_string()));
            }
        }
        Ok(records)
    }

    /// The texts of an artifact's documents, without the forgotten ones.
    pub(crate) fn documents(
        &self,
        artifact: &Artifact,
        forgotten: &Forgotten,
    ) -> Result<Vec<String>, HandlerError> {
        let path = self
            .store
            .verified_path(artifact)
            .map_err(HandlerError::transient)?;
        let documents = read_documents(&path).map_err(HandlerError::permanent)?;
        Ok(forgotten.texts(documents))
    }

    /// A pre-training dataset's training and held-out documents, split as the evaluator
    /// splits them.
    pub(crate) fn splits(
        &self,
        dataset: &DatasetPrepared,
        forgotten: &Forgotten,
    ) -> Result<(Vec<String>, Vec<String>), HandlerError> {
        let validation = match &dataset.validation {
            Some(v) => self.documents(v, forgotten)?,
            None => vec![],
        };
        let train = self.documents(&dataset.train, forgotten)?;
        Ok(corpus::hold_out(train, validation, corpus::HELD_OUT))
    }

    /// The dataset's splits encoded into token shards in the job directory.
    pub(crate) fn pretrain_data(
        &self,
        dataset: &DatasetPrepared,
        trainer: &Trainer,
        dir: &Path,
        forgotten: &Forgotten,
    ) -> Result<Data, HandlerError> {
        let (train, validation) = self.splits(dataset, forgotten)?;
        let (train_path, val_path) = (dir.join("train.tok"), dir.join("val.tok"));
        let tokenizer = &trainer.tokenizer;
        shards::write(tokenizer, &train, &train_path).map_err(HandlerError::permanent)?;
        shards::write(tokenizer, &validation, &val_path).map_err(HandlerError::permanent)?;
        let block = trainer.model.config.block_size as usize;
        let train = Shard::open(&train_path).map_err(HandlerError::permanent)?;
        let val = Shard::open(&val_path).map_err(HandlerError::permanent)?;
        // The job's own rows per step (a resumed job keeps those it started with).
        let (batch, seed) = (trainer.state().config.batch_size, self.settings.seed);
        Ok(Data {
            batches: Box::new(
                Windows::new(train, batch, block, seed).map_err(HandlerError::permanent)?,
            ),
            // A validation split shorter than one window is not scored.
            validation: validation_batches(&val, block, batch, None, trainer.model.device())
                .unwrap_or_default(),
            taught: vec![],
            held_out: vec![],
            forgotten_left_out: forgotten.left_out(),
        })
    }

    /// The records of the SFT datasets' splits not in `skip` (learnt already): the
    /// conversations a fine-tuning trains and validates on.
    pub(crate) fn fresh_records(
        &self,
        datasets: &[DatasetPrepared],
        skip: &HashSet<String>,
        forgotten: &Forgotten,
    ) -> Result<Records, HandlerError> {
        let fresh = |artifact: &Artifact| -> Result<Vec<String>, HandlerError> {
            let mut texts = self.documents(artifact, forgotten)?;
            texts.retain(|text| !skip.contains(text.trim()));
            Ok(texts)
        };
        let mut records = Records::default();
        for dataset in datasets {
            records.train.extend(fresh(&dataset.train)?);
            if let Some(v) = &dataset.validation {
                records.validation.extend(fresh(v)?);
            }
        }
        Ok(records)
    }

    /// The conversations of `records`, packed (training and validation), mixed with
    /// rehearsal text.
    pub(crate) fn sft_data(
        &self,
        records: &Records,
        rehearsal: &[DatasetPrepared],
        trainer: &Trainer,
        dir: &Path,
        forgotten: &Forgotten,
    ) -> Result<Data, HandlerError> {
        let (tokenizer, model) = (&trainer.tokenizer, &trainer.model);
        let examples = |texts: &[String]| -> Result<Vec<Example>, HandlerError> {
            texts
                .iter()
                .map(|text| {
                    let messages = chat::parse_record(text).map_err(HandlerError::permanent)?;
                    chat::render(tokenizer, &messages).map_err(HandlerError::permanent)
                })
                .collect()
        };
        let (train, validation) = (examples(&records.train)?, examples(&records.validation)?);
        let block = model.config.block_size as usize;
        let pad = tokenizer::end_of_text(tokenizer);
        let (rows, seed) = (trainer.state().config.batch_size, self.settings.seed);
        let text_rows = ((rows as f64 * self.settings.rehearsal_share).round() as usize)
            .min(rows.saturating_sub(1));
        let text = match text_rows {
            0 => None,
            _ => self.rehearsal_text(rehearsal, tokenizer, block, dir, forgotten)?,
        };
        let batches: Box<dyn Batches + Send> = match text {
            Some(shard) => {
                // Every step sees every correction (up to a batch of rows of them) beside the
                // rehearsal rows, so a larger set of corrections does not learn more slowly.
                let examples = Packed::new(&train, rows - text_rows, block, pad, seed)
                    .map_err(HandlerError::permanent)?;
                let all = examples.rows().clamp(rows - text_rows, rows);
                let examples = examples.with_batch_size(all);
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
        let held_out = self.held_out_text(rehearsal, forgotten)?;
        Ok(Data {
            batches,
            validation,
            taught: train,
            held_out,
            forgotten_left_out: forgotten.left_out(),
        })
    }

    /// The held-out documents of the pre-training datasets, as the evaluator holds them out.
    pub(crate) fn held_out_text(
        &self,
        pretraining: &[DatasetPrepared],
        forgotten: &Forgotten,
    ) -> Result<Vec<String>, HandlerError> {
        let mut held_out = Vec::new();
        for dataset in pretraining {
            held_out.extend(self.splits(dataset, forgotten)?.1);
        }
        Ok(held_out)
    }

    /// The pre-training text (its training split, at most `REHEARSAL_BYTES`) as a token shard
    /// in the job directory; none when there is too little for a window.
    fn rehearsal_text(
        &self,
        rehearsal: &[DatasetPrepared],
        tokenizer: &quark_ml::Tokenizer,
        block: usize,
        dir: &Path,
        forgotten: &Forgotten,
    ) -> Result<Option<Shard>, HandlerError> {
        let mut text = Vec::new();
        let mut bytes = 0;
        // Datasets past the bound are not read at all.
        for dataset in rehearsal {
            if bytes >= REHEARSAL_BYTES {
                break;
            }
            for doc in self.splits(dataset, forgotten)?.0 {
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

pub(crate) struct Data {
    pub batches: Box<dyn Batches + Send>,
    pub validation: Vec<Batch>,
    /// The feedback conversations trained on (fine-tuning).
    pub taught: Vec<Example>,
    /// The pre-training data's held-out documents, as the evaluator holds them out.
    pub held_out: Vec<String>,
    /// Forgotten documents the data would have held.
    pub forgotten_left_out: usize,
}
