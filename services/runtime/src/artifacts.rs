//! The artifact store: large things (shards, checkpoints, tokenizers, reports) stored once,
//! addressed by the SHA-256 of their bytes. Events carry the URI and the hash.

use async_trait::async_trait;
use quark_events::Artifact;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
}

/// Where artifacts live. The local directory implements it; S3-compatible object storage can.
#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Stores `bytes` and returns its reference; storing the same bytes twice is a no-op.
    async fn put(&self, bytes: &[u8]) -> Result<Artifact, ArtifactError>;
    /// Stores the file at `path`, streaming it.
    async fn put_file(&self, path: &Path) -> Result<Artifact, ArtifactError>;
    /// Reads an artifact back, checking its hash.
    async fn get(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactError>;
}

/// Content read back must hash to what the artifact says.
fn matches_hash(artifact: &Artifact, found: String) -> Result<(), ArtifactError> {
    if found == artifact.sha256 {
        return Ok(());
    }
    Err(ArtifactError::Corrupt {
        uri: artifact.uri.clone(),
        expected: artifact.sha256.clone(),
        found,
    })
}

/// A directory of files named by their hash: `<root>/<first two hex digits>/<sha256>`.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, ArtifactError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| ArtifactError::Io {
            path: root.clone(),
            source,
        })?;
        let root = root.canonicalize().map_err(|source| ArtifactError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(LocalStore { root })
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2]).join(sha256)
    }

    /// The local path of an artifact of this store (for libraries that read files).
    pub fn local_path(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        let path = artifact
            .uri
            .strip_prefix("file://")
            .map(PathBuf::from)
            .ok_or_else(|| ArtifactError::UnsupportedUri(artifact.uri.clone()))?;
        if !path.starts_with(&self.root) {
            return Err(ArtifactError::UnsupportedUri(artifact.uri.clone()));
        }
        Ok(path)
    }

    /// The local path of an artifact once its content is checked against its hash, reading
    /// it in chunks: for artifacts too large to hold in memory.
    pub fn verified_path(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        let path = self.local_path(artifact)?;
        let io = |source| ArtifactError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io)?;
        matches_hash(artifact, hex::encode(hasher.finalize()))?;
        Ok(path)
    }

    /// Moves a finished temporary file into place under its hash.
    async fn commit(
        &self,
        temp: &Path,
        sha256: String,
        size: u64,
    ) -> Result<Artifact, ArtifactError> {
        let path = self.path_of(&sha256);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArtifactError::Io { path, source }
        };
        let dir = path.parent().expect("artifact paths have a parent");
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        tokio::fs::rename(temp, &path).await.map_err(io(&path))?;
        Ok(Artifact {
            uri: format!("file://{}", path.display()),
            sha256,
            size_bytes: size as i64,
        })
    }

    /// Stores the files `names` of directory `dir` and a manifest naming them: the manifest
    /// is the directory's artifact (a checkpoint is one).
    pub async fn put_dir(&self, dir: &Path, names: &[&str]) -> Result<Artifact, ArtifactError> {
        let mut manifest = std::collections::BTreeMap::new();
        for name in names {
            manifest.insert(name.to_string(), self.put_file(&dir.join(name)).await?);
        }
        let json = serde_json::to_vec_pretty(&manifest).expect("artifacts serialise to JSON");
        self.put(&json).await
    }

    /// Copies a directory stored by [`LocalStore::put_dir`] to `dest` (each file checked
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
        let manifest: std::collections::BTreeMap<String, Artifact> =
            serde_json::from_slice(&self.get(artifact).await?).map_err(|e| ArtifactError::Io {
                path: PathBuf::from(&artifact.uri),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
        // Built beside `dest` and renamed into place: a reader never sees half a directory.
        let temp = dest.with_extension(format!("incoming-{}", quark_events::Id::random()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArtifactError::Io { path, source }
        };
        tokio::fs::create_dir_all(&temp).await.map_err(io(&temp))?;
        for (name, file) in &manifest {
            let source = self.verified_path(file)?;
            let target = temp.join(name);
            tokio::fs::copy(&source, &target)
                .await
                .map_err(io(&target))?;
        }
        tokio::fs::write(temp.join(".complete"), b"")
            .await
            .map_err(io(&temp))?;
        if dest.exists() && !done.exists() {
            // Left by a reader that crashed half-way.
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

    fn temp_path(&self) -> PathBuf {
        self.root
            .join(format!(".incoming-{}", quark_events::Id::random()))
    }
}

#[async_trait]
impl ArtifactStore for LocalStore {
    async fn put(&self, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let temp = self.temp_path();
        tokio::fs::write(&temp, bytes)
            .await
            .map_err(|source| ArtifactError::Io {
                path: temp.clone(),
                source,
            })?;
        self.commit(&temp, sha256, bytes.len() as u64).await
    }

    async fn put_file(&self, path: &Path) -> Result<Artifact, ArtifactError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArtifactError::Io { path, source }
        };
        // One pass: hash while copying into the temporary file.
        let mut input = tokio::fs::File::open(path).await.map_err(io(path))?;
        let temp = self.temp_path();
        let mut output = tokio::fs::File::create(&temp).await.map_err(io(&temp))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = input.read(&mut buffer).await.map_err(io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            output.write_all(&buffer[..n]).await.map_err(io(&temp))?;
            size += n as u64;
        }
        output.flush().await.map_err(io(&temp))?;
        self.commit(&temp, hex::encode(hasher.finalize()), size)
            .await
    }

    async fn get(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactError> {
        let path = self.local_path(artifact)?;
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| ArtifactError::Io { path, source })?;
        matches_hash(artifact, hex::encode(Sha256::digest(&bytes)))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn content_addressed_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let a = store.put(b"hello").await.unwrap();
        assert_eq!(
            a.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(a.size_bytes, 5);
        assert_eq!(
            store.put(b"hello").await.unwrap(),
            a,
            "same bytes, same artifact"
        );
        assert_eq!(store.get(&a).await.unwrap(), b"hello");
        assert_eq!(
            store.verified_path(&a).unwrap(),
            store.local_path(&a).unwrap()
        );

        let file = dir.path().join("input.txt");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(store.put_file(&file).await.unwrap(), a);

        std::fs::write(store.local_path(&a).unwrap(), b"jello").unwrap();
        let error = store.get(&a).await.unwrap_err();
        assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error}");
        let error = store.verified_path(&a).unwrap_err();
        assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error}");
    }
}
