//! The artifact store: large things (shards, checkpoints, tokenizers, reports) stored once,
//! addressed by the SHA-256 of their bytes. Events carry the URI and the hash.
//!
//! One type, [`ArtifactStore`], over two backends: a local directory (`file://` URIs, the
//! default) and S3-compatible object storage (`s3://bucket/prefix/ab/abcd…` URIs) with a
//! local, hash-verified cache for the libraries that read files. A store refuses URIs it
//! does not own, so a gateway reads a trainer's checkpoints when both name the same store.

mod local;
mod s3;
#[cfg(feature = "testing")]
pub mod testing;

pub use local::LocalStore;
pub use s3::{PART_BYTES, S3Config, S3Store};

use crate::config::ArtifactSettings;
use quark_events::Artifact;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact {uri} is corrupt: expected SHA-256 {expected}, found {found}")]
    Corrupt {
        uri: String,
        expected: String,
        found: String,
    },
    #[error("this store cannot read {0}")]
    UnsupportedUri(String),
    #[error("artifact {uri} names no valid SHA-256 ({sha256:?})")]
    InvalidHash { uri: String, sha256: String },
    #[error("object storage, on {uri}: {source}")]
    ObjectStore {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("artifact settings: {0}")]
    Config(String),
    #[error("directory manifest {uri} names a file outside its directory: {name:?}")]
    ManifestEntry { uri: String, name: String },
    #[error("directory manifest {uri} is not valid JSON: {source}")]
    Manifest {
        uri: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ArtifactError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            ArtifactError::Io { .. } => "io",
            ArtifactError::Corrupt { .. } => "corrupt",
            ArtifactError::UnsupportedUri(_) => "unsupported_uri",
            ArtifactError::InvalidHash { .. } => "invalid_hash",
            ArtifactError::ObjectStore { .. } => "object_store",
            ArtifactError::Config(_) => "config",
            ArtifactError::Manifest { .. } | ArtifactError::ManifestEntry { .. } => "manifest",
        }
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + use<> {
    let path = path.to_path_buf();
    move |source| ArtifactError::Io { path, source }
}

/// Content read back must hash to what the artifact says.
pub(crate) fn matches_hash(artifact: &Artifact, found: String) -> Result<(), ArtifactError> {
    if found == artifact.sha256 {
        return Ok(());
    }
    Err(ArtifactError::Corrupt {
        uri: artifact.uri.clone(),
        expected: artifact.sha256.clone(),
        found,
    })
}

/// The SHA-256 of a file, read in chunks.
pub(crate) fn hash_file(path: &Path) -> Result<String, ArtifactError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io_error(path))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Where artifacts live: a local directory or S3-compatible object storage.
pub enum ArtifactStore {
    Local(LocalStore),
    S3(S3Store),
}

impl ArtifactStore {
    /// A local store rooted at `root` (created if missing).
    pub fn local(root: impl Into<PathBuf>) -> Result<Self, ArtifactError> {
        Ok(ArtifactStore::Local(LocalStore::new(root)?))
    }

    /// The store `settings` name: `url` = `s3://bucket/prefix` → object storage cached in
    /// `cache_dir` (default `<data_dir>/artifact-cache`); `file:///path` → that directory;
    /// empty → the directory `root` (default `<data_dir>/artifacts`).
    pub fn from_settings(
        settings: &ArtifactSettings,
        data_dir: &Path,
    ) -> Result<Self, ArtifactError> {
        let url = settings.url.trim();
        if url.is_empty() {
            let root = match settings.root.as_str() {
                "" => data_dir.join("artifacts"),
                root => PathBuf::from(root),
            };
            return Self::local(root);
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Self::local(path);
        }
        if url.starts_with("s3://") {
            let cache = match settings.cache_dir.as_str() {
                "" => data_dir.join("artifact-cache"),
                dir => PathBuf::from(dir),
            };
            return Ok(ArtifactStore::S3(S3Store::new(S3Config::from_settings(
                settings, cache,
            ))?));
        }
        Err(ArtifactError::Config(format!(
            "artifacts.url must start with file:// or s3://, not {url:?}"
        )))
    }

    /// Where this store keeps artifacts, as a URL (for logs).
    pub fn location(&self) -> String {
        match self {
            ArtifactStore::Local(store) => format!("file://{}", store.root().display()),
            ArtifactStore::S3(store) => store.location(),
        }
    }

    /// Stores `bytes` and returns its reference; storing the same bytes twice is a no-op.
    pub async fn put(&self, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        match self {
            ArtifactStore::Local(store) => store.put(bytes).await,
            ArtifactStore::S3(store) => store.put(bytes).await,
        }
    }

    /// Stores the file at `path`, streaming it.
    pub async fn put_file(&self, path: &Path) -> Result<Artifact, ArtifactError> {
        match self {
            ArtifactStore::Local(store) => store.put_file(path).await,
            ArtifactStore::S3(store) => store.put_file(path).await,
        }
    }

    /// Reads an artifact back, checking its hash.
    pub async fn get(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactError> {
        match self {
            ArtifactStore::Local(store) => store.get(artifact).await,
            ArtifactStore::S3(store) => store.get(artifact).await,
        }
    }

    /// A local file holding the artifact, checked against its hash (for libraries that read
    /// files): the file itself in a local store, a cached download from object storage.
    pub async fn fetch(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        match self {
            ArtifactStore::Local(store) => store.verified_path(artifact),
            ArtifactStore::S3(store) => store.fetch(artifact).await,
        }
    }

    /// [`ArtifactStore::fetch`] for synchronous code. From object storage it blocks the
    /// calling thread while it downloads (off the async workers' hands on a multi-threaded
    /// runtime).
    pub fn verified_path(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        match self {
            ArtifactStore::Local(store) => store.verified_path(artifact),
            ArtifactStore::S3(store) => store.fetch_blocking(artifact),
        }
    }

    async fn copy_to(&self, artifact: &Artifact, target: &Path) -> Result<(), ArtifactError> {
        match self {
            ArtifactStore::Local(store) => store.copy_to(artifact, target).await,
            ArtifactStore::S3(store) => store.copy_to(artifact, target).await,
        }
    }

    /// Stores the files `names` of directory `dir` and a manifest naming them: the manifest
    /// is the directory's artifact (a checkpoint is one).
    pub async fn put_dir(&self, dir: &Path, names: &[&str]) -> Result<Artifact, ArtifactError> {
        let mut manifest = BTreeMap::new();
        for name in names {
            manifest.insert(name.to_string(), self.put_file(&dir.join(name)).await?);
        }
        let json = serde_json::to_vec_pretty(&manifest).expect("artifacts serialise to JSON");
        self.put(&json).await
    }

    /// Copies a directory stored by [`ArtifactStore::put_dir`] to `dest` (each file checked
    /// against its hash) unless `dest` already holds it; returns `dest`.
    pub async fn get_dir(
        &self,
        artifact: &Artifact,
        dest: &Path,
    ) -> Result<PathBuf, ArtifactError> {
        let done = dest.join(".complete");
        if done.exists() {
            return Ok(dest.to_path_buf());
        }
        let manifest: BTreeMap<String, Artifact> =
            serde_json::from_slice(&self.get(artifact).await?).map_err(|source| {
                ArtifactError::Manifest {
                    uri: artifact.uri.clone(),
                    source,
                }
            })?;
        // Built beside `dest` and renamed into place: a reader never sees half a directory.
        let temp = dest.with_extension(format!("incoming-{}", quark_events::Id::random()));
        tokio::fs::create_dir_all(&temp)
            .await
            .map_err(io_error(&temp))?;
        for (name, file) in &manifest {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                let _ = tokio::fs::remove_dir_all(&temp).await;
                return Err(ArtifactError::ManifestEntry {
                    uri: artifact.uri.clone(),
                    name: name.clone(),
                });
            }
            if let Err(e) = self.copy_to(file, &temp.join(name)).await {
                let _ = tokio::fs::remove_dir_all(&temp).await;
                return Err(e);
            }
        }
        tokio::fs::write(temp.join(".complete"), b"")
            .await
            .map_err(io_error(&temp))?;
        if dest.exists() && !done.exists() {
            warn!(dir = %dest.display(), "removing a directory a crashed reader left half-copied");
            let _ = tokio::fs::remove_dir_all(dest).await;
        }
        if let Err(source) = tokio::fs::rename(&temp, dest).await {
            let _ = tokio::fs::remove_dir_all(&temp).await;
            // Another reader finished first: theirs is as good.
            if !done.exists() {
                return Err(ArtifactError::Io {
                    path: dest.to_path_buf(),
                    source,
                });
            }
        }
        Ok(dest.to_path_buf())
    }
}
