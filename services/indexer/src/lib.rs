//! The indexer service: for each dataset.prepared of a kind it indexes (`knowledge` by
//! default), cut every document into passages at sentence and code-block boundaries, embed
//! them with the sentence encoder and append them to the LanceDB table of the index; then emit
//! index.updated.
//!
//! Replays are safe: a passage's id is its document's id and byte range, and the table adds
//! only ids it lacks, so a redelivered dataset adds no row and emits the same event id.

use async_trait::async_trait;
use quark_curate::pipeline::Document;
use quark_curate::store::read_documents;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{DatasetKind, DatasetPrepared, Event, EventHeader, EventKind, IndexUpdated};
use quark_retrieval::chunk::{self, ChunkConfig};
use quark_retrieval::retriever::{RetrieveError, Retriever};
use quark_retrieval::store::{Passage, StoreConfig};
use quark_runtime::ArtifactStore;
use quark_runtime::config::RetrievalSettings;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

pub const NAME: &str = "indexer";

/// Passages embedded and appended at a time: memory is bounded by this, not the dataset.
const APPEND_PASSAGES: usize = 4096;

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
        let config = StoreConfig {
            vector_index_min_rows: self.settings.vector_index_min_rows,
            ..StoreConfig::default()
        };
        self.retriever
            .get_or_try_init(|| async move {
                Retriever::open(&self.uri, &dir, config)
                    .await
                    .map_err(|e| match e {
                        RetrieveError::Encoder(_) => HandlerError::Permanent(e.to_string()),
                        RetrieveError::Store(_) => HandlerError::transient(e),
                    })
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
        let store = retriever.store();
        let chunking = ChunkConfig {
            size: self.settings.chunk_tokens,
            overlap: self.settings.overlap_tokens,
        };
        chunking.validate().map_err(HandlerError::Permanent)?;
        let passages = passages(&documents, &chunking, retriever, dataset);
        let index = &self.settings.index;
        // As it stands, for a dataset with no passages.
        let mut appended = store.state(index).await.map_err(HandlerError::transient)?;
        let mut rows_added = 0;
        for batch in passages.chunks(APPEND_PASSAGES) {
            let embedded = embed(retriever, batch, self.settings.batch_size)?;
            appended = store
                .append(index, &embedded)
                .await
                .map_err(HandlerError::transient)?;
            rows_added += appended.rows_added;
        }
        tracing::info!(
            dataset = %dataset.dataset_id, documents = documents.len(), passages = passages.len(),
            rows_added, rows_total = appended.rows_total, "dataset indexed"
        );
        Ok(vec![Event::IndexUpdated(IndexUpdated {
            header: EventHeader::caused_by(&dataset.header, NAME, "index"),
            index_name: index.clone(),
            dataset_id: dataset.dataset_id,
            table_uri: format!("{}/{index}.lance", self.uri.trim_end_matches('/')),
            embedding_model: retriever.model().to_string(),
            dimensions: retriever.dimension() as i32,
            rows_added: rows_added as i64,
            rows_total: appended.rows_total as i64,
            table_version: Some(appended.version as i64),
        })])
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

/// Each document's passages, measured in the encoder's tokens; the vectors come later.
fn passages(
    documents: &[Document],
    chunking: &ChunkConfig,
    retriever: &Retriever,
    dataset: &DatasetPrepared,
) -> Vec<Passage> {
    let measure = |text: &str| retriever.token_count(text);
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
                    vector: Vec::new(),
                })
        })
        .collect()
}

fn embed(
    retriever: &Retriever,
    passages: &[Passage],
    batch_size: usize,
) -> Result<Vec<Passage>, HandlerError> {
    let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
    // CPU- (or GPU-) bound: off the async workers' hands while it runs.
    let vectors = tokio::task::block_in_place(|| retriever.encode(&texts, batch_size))
        .map_err(|e| HandlerError::Permanent(e.to_string()))?;
    Ok(passages
        .iter()
        .zip(vectors)
        .map(|(p, vector)| Passage {
            vector,
            ..p.clone()
        })
        .collect())
}

#[async_trait]
impl Handler for IndexerService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::DatasetPrepared]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        match event {
            Event::DatasetPrepared(dataset) if self.indexes(dataset.kind) => {
                self.index(dataset).await
            }
            _ => Ok(vec![]),
        }
    }
}
