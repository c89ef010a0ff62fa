//! The curator service: for each data.collected, curate its shards against everything
//! accepted before (the persistent dedup index under `<data_dir>/curate/index`), store the
//! dataset (train, validation, rejects, stats) as artifacts and emit dataset.prepared; then
//! train a byte-level BPE tokenizer on the kept text and emit tokenizer.trained.
//!
//! For each forget.requested, take the document out of the index and emit document.forgotten
//! with the datasets that held it.
//!
//! Replays are safe: the index ignores what an earlier attempt at the same collection
//! accepted, artifacts are content-addressed and the emitted event's id derives from its cause.

use async_trait::async_trait;
use quark_curate::dedup::DedupIndex;
use quark_curate::filters::{Lexicon, QualityConfig};
use quark_curate::minhash::MinHashConfig;
use quark_curate::pipeline::{CurateConfig, Curator};
use quark_curate::store::{DatasetWriter, documents};
use quark_events::bus::{Handler, HandlerError};
use quark_events::{
    Artifact, DataCollected, DatasetKind, DatasetPrepared, DocumentForgotten, Event, EventHeader,
    EventKind, ForgetRequested, Id, TokenizerKind, TokenizerTrained,
};
use quark_ml::tokenizer::{self, TrainOptions};
use quark_runtime::artifacts::ArtifactStore;
use quark_runtime::config::CurateSettings;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const NAME: &str = "curator";
/// The data.collected label naming the dataset's kind (`pretrain` when absent).
pub const DATASET_KIND: &str = "dataset_kind";

/// The dataset kind a collection asks for. Records (sft, preference, eval) skip the prose
/// quality rules and get no tokenizer; everything else applies to them as to text.
fn kind_of(collected: &DataCollected) -> Result<DatasetKind, HandlerError> {
    let Some(name) = collected.labels.get(DATASET_KIND) else {
        return Ok(DatasetKind::Pretrain);
    };
    DatasetKind::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
        HandlerError::Permanent(format!(
            "unknown {DATASET_KIND} {name:?}: one of {}",
            known.join(", ")
        ))
    })
}
/// Documents per curation batch: bounds memory, whatever the collection's size.
const BATCH: usize = 2048;

pub struct CuratorService {
    store: Arc<ArtifactStore>,
    index_dir: PathBuf,
    config: CurateConfig,
    minhash: MinHashConfig,
    validation_fraction: f64,
    /// Of the tokenizer trained on each dataset.
    vocab_size: usize,
    /// One curation at a time: they share the index.
    lock: tokio::sync::Mutex<()>,
}

impl CuratorService {
    pub fn new(
        store: Arc<ArtifactStore>,
        data_dir: &Path,
        settings: &CurateSettings,
    ) -> CuratorService {
        CuratorService {
            store,
            index_dir: data_dir.join("curate").join("index"),
            config: CurateConfig {
                quality: Some(QualityConfig {
                    min_words: settings.min_words,
                    ..Default::default()
                }),
                max_toxicity: Some(settings.max_toxicity),
                languages: settings.languages.clone(),
                scrub_pii: settings.scrub_pii,
                ..Default::default()
            },
            minhash: settings.minhash,
            validation_fraction: settings.validation_fraction,
            vocab_size: settings.tokenizer_vocab_size,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn curate(&self, collected: &DataCollected) -> Result<Vec<Event>, HandlerError> {
        let _one_at_a_time = self.lock.lock().await;
        let transient = |e: &dyn std::fmt::Display| HandlerError::Transient(e.to_string());
        let work = tempfile_dir(&self.index_dir)?;
        let tag = collected.collection_id.to_string();
        let index = DedupIndex::open(&self.index_dir, self.minhash, &tag)
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let kind = kind_of(collected)?;
        let config = match kind {
            DatasetKind::Pretrain => self.config.clone(),
            _ => CurateConfig {
                quality: None,
                ..self.config.clone()
            },
        };
        let mut curator = Curator::new(config, index, Box::new(Lexicon::english()));
        let out = work.join("dataset");
        let mut writer =
            DatasetWriter::create(&out, self.validation_fraction).map_err(|e| transient(&e))?;
        // CPU-bound: off the async workers' hands while it runs.
        tokio::task::block_in_place(|| -> Result<(), HandlerError> {
            for shard in &collected.shards {
                // Streamed in batches: memory is bounded by the batch, not the shard.
                let path = self.store.verified_path(shard).map_err(|e| transient(&e))?;
                let mut documents = documents(&path).map_err(|e| transient(&e))?;
                loop {
                    let batch = documents
                        .by_ref()
                        .take(BATCH)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| HandlerError::Permanent(e.to_string()))?;
                    if batch.is_empty() {
                        break;
                    }
                    writer
                        .write(&curator.curate(batch))
                        .map_err(|e| transient(&e))?;
                }
            }
            Ok(())
        })?;
        let (train_examples, validation_examples) =
            (writer.train_documents, writer.validation_documents);
        writer.finish(&curator.stats).map_err(|e| transient(&e))?;
        let put = |name: &'static str| {
            let path = out.join(name);
            let store = self.store.clone();
            async move { store.put_file(&path).await }
        };
        let train = put("train.jsonl").await.map_err(|e| transient(&e))?;
        let validation = put("validation.jsonl").await.map_err(|e| transient(&e))?;
        let rejects = put("rejects.jsonl").await.map_err(|e| transient(&e))?;
        let tokenizer = match kind {
            DatasetKind::Pretrain => self.train_tokenizer(&out, &work).await?,
            _ => None,
        };
        // The index records this collection only once its dataset is stored.
        curator.index.flush().map_err(|e| transient(&e))?;
        let _ = std::fs::remove_dir_all(&work);
        let stats = &curator.stats;
        let mut counts: HashMap<String, i64> = HashMap::from([
            ("documents".to_string(), stats.documents as i64),
            ("kept".to_string(), stats.kept as i64),
            ("bytes_in".to_string(), stats.bytes_in as i64),
            ("bytes_kept".to_string(), stats.bytes_kept as i64),
        ]);
        counts.extend(
            stats
                .rejected
                .iter()
                .map(|(k, v)| (format!("rejected:{k}"), *v as i64)),
        );
        counts.extend(
            stats
                .pii
                .iter()
                .map(|(k, v)| (format!("pii:{k}"), *v as i64)),
        );
        let dataset_id = Id::derived(collected.collection_id, "dataset");
        let mut events = vec![];
        if let Some((artifact, vocab_size)) = tokenizer {
            events.push(Event::TokenizerTrained(TokenizerTrained {
                header: EventHeader::caused_by(&collected.header, NAME, "tokenizer"),
                tokenizer_id: Id::derived(collected.collection_id, "tokenizer"),
                dataset_id,
                kind: TokenizerKind::ByteLevelBpe,
                vocab_size: vocab_size as i32,
                special_tokens: TrainOptions::default().special_tokens,
                artifact,
            }));
        }
        events.insert(
            0,
            Event::DatasetPrepared(DatasetPrepared {
                header: EventHeader::caused_by(&collected.header, NAME, "dataset"),
                dataset_id,
                name: collected.source_uri.clone(),
                kind,
                train,
                validation: Some(validation),
                rejects: Some(rejects),
                train_examples: train_examples as i64,
                validation_examples: validation_examples as i64,
                stats: counts,
                source_collections: vec![collected.collection_id],
                parent_dataset_id: None,
            }),
        );
        Ok(events)
    }

    /// Takes the document out of the dedup index and names the datasets that held it: those
    /// of the collections whose runs accepted it.
    async fn forget(&self, request: &ForgetRequested) -> Result<Vec<Event>, HandlerError> {
        let _one_at_a_time = self.lock.lock().await;
        let runs = DedupIndex::forget(&self.index_dir, &request.document_id)
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        let dataset_ids = runs
            .iter()
            .filter_map(|run| run.parse::<Id>().ok())
            .map(|collection| Id::derived(collection, "dataset"))
            .collect();
        Ok(vec![Event::DocumentForgotten(DocumentForgotten {
            header: EventHeader::caused_by(&request.header, NAME, "forgotten"),
            document_id: request.document_id.clone(),
            dataset_ids,
        })])
    }

    /// A byte-level BPE tokenizer trained on the kept training text (none if nothing was kept).
    async fn train_tokenizer(
        &self,
        dataset: &Path,
        work: &Path,
    ) -> Result<Option<(Artifact, usize)>, HandlerError> {
        let transient = |e: &dyn std::fmt::Display| HandlerError::Transient(e.to_string());
        // The kept text, streamed into one file for the trainer.
        let text_path = work.join("train.txt");
        let mut text =
            std::io::BufWriter::new(std::fs::File::create(&text_path).map_err(|e| transient(&e))?);
        let mut kept = 0usize;
        for document in documents(&dataset.join("train.jsonl")).map_err(|e| transient(&e))? {
            let document = document.map_err(|e| transient(&e))?;
            text.write_all(document.text.as_bytes())
                .and_then(|_| text.write_all(b"\n\n"))
                .map_err(|e| transient(&e))?;
            kept += 1;
        }
        text.flush().map_err(|e| transient(&e))?;
        if kept == 0 {
            return Ok(None);
        }
        let options = TrainOptions {
            vocab_size: self.vocab_size,
            ..Default::default()
        };
        let trained = tokio::task::block_in_place(|| tokenizer::train(&[&text_path], &options))
            .map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let path = work.join("tokenizer.json");
        tokenizer::save(&trained, &path).map_err(|e| transient(&e))?;
        let artifact = self
            .store
            .put_file(&path)
            .await
            .map_err(|e| transient(&e))?;
        Ok(Some((artifact, trained.get_vocab_size(true))))
    }
}

/// A scratch directory beside the index, removed by the caller once the dataset is stored.
fn tempfile_dir(near: &Path) -> Result<PathBuf, HandlerError> {
    let dir = near.with_file_name("work");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| HandlerError::Transient(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

#[async_trait]
impl Handler for CuratorService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::DataCollected, EventKind::ForgetRequested]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        match event {
            Event::DataCollected(collected) => self.curate(collected).await,
            Event::ForgetRequested(request) => self.forget(request).await,
            _ => Ok(vec![]),
        }
    }
}
