//! A query's passages: the sentence encoder embeds the question, the store ranks passages by
//! meaning, by words or both. What `quark search` and the gateway call.

use crate::store::{Hit, KnowledgeStore, Search, SearchMode, StoreConfig, StoreError};
use quark_ml::encoder::SentenceEncoder;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error("sentence encoder: {0}")]
    Encoder(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Retriever {
    encoder: Arc<LazyEncoder>,
    model: String,
    batch_size: usize,
    store: KnowledgeStore,
    /// Indexes seen to exist: an index is never dropped, so each is looked for once, not on
    /// every search.
    existing: Mutex<HashSet<String>>,
}

impl Retriever {
    /// The indexes at `uri`, searched with the sentence encoder at `encoder_dir`, which is
    /// loaded on first use (a gateway whose index does not exist yet loads no model), and
    /// embeds `batch_size` texts at a time.
    pub async fn open(
        uri: &str,
        encoder_dir: &Path,
        config: StoreConfig,
        batch_size: usize,
    ) -> Result<Retriever, RetrieveError> {
        if !encoder_dir.join("config.json").is_file() {
            let dir = encoder_dir.display();
            return Err(RetrieveError::Encoder(format!(
                "no sentence encoder at {dir} (config.json is missing)"
            )));
        }
        let store = KnowledgeStore::open(uri, config).await?;
        Ok(Retriever {
            encoder: Arc::new(LazyEncoder {
                dir: encoder_dir.to_path_buf(),
                loaded: Mutex::new(None),
            }),
            model: model_name(encoder_dir),
            batch_size: batch_size.max(1),
            store,
            existing: Mutex::default(),
        })
    }

    /// The encoder's name: its directory's (a packaged model's `model` directory is named
    /// by its package).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Width of an embedding (loads the encoder).
    pub fn dimension(&self) -> Result<usize, RetrieveError> {
        self.encoder.with(SentenceEncoder::dimension)
    }

    /// Encoder tokens of `text` (words, if the tokenizer cannot read it).
    pub fn token_count(&self, text: &str) -> Result<usize, RetrieveError> {
        self.encoder.with(|encoder| {
            encoder
                .token_count(text)
                .unwrap_or_else(|_| crate::chunk::words(text))
        })
    }

    /// Embeddings of `texts`, on the calling thread.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, RetrieveError> {
        self.encoder.encode(texts, self.batch_size)
    }

    pub fn store(&self) -> &KnowledgeStore {
        &self.store
    }

    /// Embeddings of `texts`, off the async workers' hands.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, RetrieveError> {
        let (encoder, batch_size) = (self.encoder.clone(), self.batch_size);
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            encoder.encode(&refs, batch_size)
        })
        .await
        .map_err(|e| RetrieveError::Encoder(e.to_string()))?
    }

    /// The best `k` passages of `index` for `query`.
    pub async fn search(
        &self,
        index: &str,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Hit>, RetrieveError> {
        // Refused or absent before anything is embedded.
        self.store.check_query(query, k)?;
        self.check_exists(index).await?;
        let vector = match mode {
            // BM25 alone reads no vector.
            SearchMode::FullText => vec![],
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

    /// Refuses an index that does not exist; one found once is not looked for again.
    async fn check_exists(&self, index: &str) -> Result<(), RetrieveError> {
        let known = |existing: &Mutex<HashSet<String>>| {
            existing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(index)
        };
        if known(&self.existing) {
            return Ok(());
        }
        if !self.store.exists(index).await? {
            return Err(StoreError::UnknownIndex(index.to_string()).into());
        }
        let mut existing = self.existing.lock().unwrap_or_else(|e| e.into_inner());
        existing.insert(index.to_string());
        Ok(())
    }
}

/// The sentence encoder, loaded by the first call that needs it. libtorch modules are not
/// `Sync`: one encoding at a time.
struct LazyEncoder {
    dir: PathBuf,
    loaded: Mutex<Option<SentenceEncoder>>,
}

impl LazyEncoder {
    fn with<T>(&self, f: impl FnOnce(&SentenceEncoder) -> T) -> Result<T, RetrieveError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.is_none() {
            let device = tch::Device::cuda_if_available();
            let encoder = SentenceEncoder::load(&self.dir, device)
                .map_err(|e| RetrieveError::Encoder(format!("{}: {e}", self.dir.display())))?;
            *loaded = Some(encoder);
        }
        Ok(f(loaded.as_ref().expect("loaded above")))
    }

    fn encode(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, RetrieveError> {
        self.with(|encoder| encoder.encode(texts, batch_size))?
            .map_err(|e| RetrieveError::Encoder(e.to_string()))
    }
}

fn model_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(dir).as_deref() {
        Some("model") => dir.parent().and_then(name).unwrap_or_default(),
        other => other.unwrap_or_default().to_string(),
    }
}
