//! A query's passages: the sentence encoder embeds the question, the store ranks passages by
//! meaning, by words or both. What `quark search` and the gateway call.

use crate::store::{Hit, KnowledgeStore, Search, SearchMode, StoreConfig, StoreError};
use quark_ml::encoder::SentenceEncoder;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error("sentence encoder: {0}")]
    Encoder(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Retriever {
    // libtorch modules are not `Sync`: one encoding at a time.
    encoder: Arc<Mutex<SentenceEncoder>>,
    dimension: usize,
    model: String,
    store: KnowledgeStore,
}

impl Retriever {
    pub async fn open(
        uri: &str,
        encoder_dir: &Path,
        config: StoreConfig,
    ) -> Result<Retriever, RetrieveError> {
        let device = tch::Device::cuda_if_available();
        let encoder = SentenceEncoder::load(encoder_dir, device)
            .map_err(|e| RetrieveError::Encoder(format!("{}: {e}", encoder_dir.display())))?;
        let store = KnowledgeStore::open(uri, config).await?;
        Ok(Retriever {
            dimension: encoder.dimension(),
            encoder: Arc::new(Mutex::new(encoder)),
            model: model_name(encoder_dir),
            store,
        })
    }

    /// The encoder's name: its directory's (a packaged model's `model` directory is named
    /// by its package).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Width of an embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Encoder tokens of `text` (words, if the tokenizer cannot read it).
    pub fn token_count(&self, text: &str) -> usize {
        let encoder = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
        encoder
            .token_count(text)
            .unwrap_or_else(|_| crate::chunk::words(text))
    }

    /// Embeddings of `texts`, `batch_size` at a time, on the calling thread.
    pub fn encode(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, RetrieveError> {
        let encoder = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
        encoder
            .encode(texts, batch_size)
            .map_err(|e| RetrieveError::Encoder(e.to_string()))
    }

    pub fn store(&self) -> &KnowledgeStore {
        &self.store
    }

    /// Embeddings of `texts`, off the async workers' hands.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, RetrieveError> {
        let encoder = self.encoder.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let encoder = encoder.lock().unwrap_or_else(|e| e.into_inner());
            encoder.encode(&refs, 32)
        })
        .await
        .map_err(|e| RetrieveError::Encoder(e.to_string()))?;
        encoded.map_err(|e| RetrieveError::Encoder(e.to_string()))
    }

    /// The best `k` passages of `index` for `query`.
    pub async fn search(
        &self,
        index: &str,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Hit>, RetrieveError> {
        // The store refuses an over-long query before anything is embedded.
        self.store.check_query(query, k)?;
        let vector = match mode {
            SearchMode::FullText => vec![0.0; self.dimension],
            _ => self.embed(vec![query.to_string()]).await?.remove(0),
        };
        let search = Search {
            text: query,
            vector: &vector,
            k,
            mode,
        };
        Ok(self.store.search(index, &search).await?)
    }
}

fn model_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(dir).as_deref() {
        Some("model") => dir.parent().and_then(name).unwrap_or_default(),
        other => other.unwrap_or_default().to_string(),
    }
}
