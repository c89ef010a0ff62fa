//! The indexer service: for each dataset.prepared of a kind it indexes (`knowledge` by
//! default), cut every document into passages at sentence and code-block boundaries, embed
//! them with the sentence encoder and append them to the LanceDB table of the index; then emit
//! index.updated.
//!
//! For each forget.requested, delete the document's passages from every index.
//!
//! Replays are safe: a passage's id is its document's id and byte range, and the table adds
//! only ids it lacks, so a redelivered dataset adds no row and emits the same event id.

use async_trait::async_trait;
use quark_curate::pipeline::Document;
use quark_curate::store::read_documents;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{
    DatasetKind, DatasetPrepared, Event, EventHeader, EventKind, ForgetRequested, IndexUpdated,
};
use quark_retrieval::chunk::{self, ChunkConfig};
use quark_retrieval::retriever::{RetrieveError, Retriever};
use quark_retrieval::store::{Embedded, KnowledgeStore, Passage, StoreConfig};
use quark_runtime::ArtifactStore;
use quark_runtime::config::RetrievalSettings;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

pub const NAME: &str = "indexer";

/// Passages embedded and appended at a time: memory is bounded by this, not the dataset.
const APPEND_PASSAGES: usize = 4096;

/// How the settings' indexes are opened and searched.
pub fn store_config(settings: &RetrievalSettings) -> StoreConfig {
    StoreConfig {
        vector_index_min_rows: settings.vector_index_min_rows,
        storage_options: settings.storage_options.0.clone(),
        ..StoreConfig::default()
    }
}

pub struct IndexerService {
    artifacts: Arc<ArtifactStore>,
    settings: RetrievalSettings,
    uri: String,
    encoder_dir: Result<PathBuf, String>,
    // Opened on the first dataset to index: a stack that indexes nothing loads no model.
    retriever: OnceCell<Retriever>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl IndexerService {
    /// `uri` is the LanceDB URI of the indexes; `encoder_dir` where the sentence encoder is
    /// (an error is reported when a dataset needs it).
    pub fn new(
        artifacts: Arc<ArtifactStore>,
        settings: RetrievalSettings,
        uri: String,
        encoder_dir: Result<PathBuf, String>,
    ) -> IndexerService {
        IndexerService {
            artifacts,
            settings,
            uri,
            encoder_dir,
            retriever: OnceCell::new(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    async fn retriever(&self) -> Result<&Retriever, HandlerError> {
        let dir = self.encoder_dir.clone().map_err(HandlerError::Permanent)?;
        let config = store_config(&self.settings);
        self.retriever
            .get_or_try_init(|| async move {
                Retriever::open(&self.uri, &dir, config, self.settings.batch_size)
                    .await
                    .map_err(handler_error)
            })
            .await
    }

    fn indexes(&self, kind: DatasetKind) -> bool {
        self.settings.kinds.iter().any(|k| k == kind.name())
    }

    async fn index(&self, dataset: &DatasetPrepared) -> Result<Vec<Event>, HandlerError> {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        let documents = self.documents(dataset).await?;
        let retriever = self.retriever().await?;
        // Loads the encoder now, so that a missing model is this dataset's error.
        let dimensions = retriever.dimension().map_err(handler_error)?;
        let store = retriever.store();
        let chunking = ChunkConfig {
            size: self.settings.chunk_tokens,
            overlap: self.settings.overlap_tokens,
        };
        chunking.validate().map_err(HandlerError::Permanent)?;
        let passages = passages(&documents, &chunking, retriever, dataset);
        let total = passages.len();
        let index = &self.settings.index;
        // As it stands, for a dataset with no passages.
        let mut appended = store.state(index).await.map_err(HandlerError::transient)?;
        let mut rows_added = 0;
        let mut passages = passages.into_iter().peekable();
        while passages.peek().is_some() {
            let batch: Vec<Passage> = passages.by_ref().take(APPEND_PASSAGES).collect();
            let embedded = embed(retriever, batch)?;
            appended = store
                .append(index, &embedded)
                .await
                .map_err(HandlerError::transient)?;
            rows_added += appended.rows_added;
        }
        tracing::info!(
            dataset = %dataset.dataset_id, documents = documents.len(), passages = total,
            rows_added, rows_total = appended.rows_total, "dataset indexed"
        );
        Ok(vec![Event::IndexUpdated(IndexUpdated {
            header: EventHeader::caused_by(&dataset.header, NAME, "index"),
            index_name: index.clone(),
            dataset_id: dataset.dataset_id,
            table_uri: format!("{}/{index}.lance", self.uri.trim_end_matches('/')),
            embedding_model: retriever.model().to_string(),
            dimensions: dimensions as i32,
            rows_added: rows_added as i64,
            rows_total: appended.rows_total as i64,
            table_version: Some(appended.version as i64),
        })])
    }

    /// Removes the document's passages from every index, and the table versions holding them.
    /// Nothing to emit: the curator's document.forgotten reports the forgetting.
    async fn forget(&self, request: &ForgetRequested) -> Result<Vec<Event>, HandlerError> {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        // No encoder needed: the store alone.
        let store = KnowledgeStore::open(&self.uri, store_config(&self.settings))
            .await
            .map_err(HandlerError::transient)?;
        let removed = store
            .forget(&request.document_id)
            .await
            .map_err(HandlerError::transient)?;
        tracing::info!(document = %request.document_id, ?removed, "document forgotten");
        Ok(vec![])
    }

    /// Every document of the dataset's splits (all of a knowledge dataset is searchable).
    async fn documents(&self, dataset: &DatasetPrepared) -> Result<Vec<Document>, HandlerError> {
        let mut documents = Vec::new();
        for split in std::iter::once(&dataset.train).chain(&dataset.validation) {
            let path = self
                .artifacts
                .fetch(split)
                .await
                .map_err(HandlerError::transient)?;
            let read = tokio::task::block_in_place(|| read_documents(&path));
            documents.extend(read.map_err(|e| HandlerError::Permanent(e.to_string()))?);
        }
        Ok(documents)
    }
}

/// Each document's passages, measured in the encoder's tokens (loaded by then).
fn passages(
    documents: &[Document],
    chunking: &ChunkConfig,
    retriever: &Retriever,
    dataset: &DatasetPrepared,
) -> Vec<Passage> {
    let measure = |text: &str| {
        retriever
            .token_count(text)
            .unwrap_or_else(|_| chunk::words(text))
    };
    documents
        .iter()
        .flat_map(|document| {
            chunk::chunks(&document.text, chunking, &measure)
                .into_iter()
                .map(|piece| Passage {
                    id: format!("{}@{}-{}", document.id, piece.range.start, piece.range.end),
                    text: piece.text,
                    source: document.source.clone(),
                    document_id: document.id.clone(),
                    dataset_id: dataset.dataset_id.to_string(),
                    start: piece.range.start as u64,
                    end: piece.range.end as u64,
                })
        })
        .collect()
}

fn embed(retriever: &Retriever, passages: Vec<Passage>) -> Result<Vec<Embedded>, HandlerError> {
    let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
    // CPU- (or GPU-) bound: off the async workers' hands while it runs.
    let vectors = tokio::task::block_in_place(|| retriever.encode(&texts))
        .map_err(|e| HandlerError::Permanent(e.to_string()))?;
    Ok(passages
        .into_iter()
        .zip(vectors)
        .map(|(passage, vector)| Embedded { passage, vector })
        .collect())
}

/// A missing or unloadable encoder is the dataset's fault; the store's errors may pass.
fn handler_error(e: RetrieveError) -> HandlerError {
    match e {
        RetrieveError::Encoder(_) => HandlerError::Permanent(e.to_string()),
        RetrieveError::Store(_) => HandlerError::transient(e),
    }
}

#[async_trait]
impl Handler for IndexerService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::DatasetPrepared, EventKind::ForgetRequested]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        match event {
            Event::DatasetPrepared(dataset) if self.indexes(dataset.kind) => {
                self.index(dataset).await
            }
            Event::ForgetRequested(request) => self.forget(request).await,
            _ => Ok(vec![]),
        }
    }
}
