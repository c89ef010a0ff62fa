//! The local backend: a directory of files named by their hash,
//! `<root>/<first two hex digits>/<sha256>`, addressed by `file://` URIs.

use super::{ArtifactError, io_error, matches_hash};
use quark_events::Artifact;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, ArtifactError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_error(&root))?;
        let root = root.canonicalize().map_err(io_error(&root))?;
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
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
        matches_hash(artifact, super::hash_file(&path)?)?;
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
        let dir = path.parent().expect("artifact paths have a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io_error(dir))?;
        tokio::fs::rename(temp, &path)
            .await
            .map_err(io_error(&path))?;
        Ok(Artifact {
            uri: format!("file://{}", path.display()),
            sha256,
            size_bytes: size as i64,
        })
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join(format!(".incoming-{}", quark_events::Id::random()))
    }

    pub async fn put(&self, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let temp = self.temp_path();
        tokio::fs::write(&temp, bytes)
            .await
            .map_err(io_error(&temp))?;
        self.commit(&temp, sha256, bytes.len() as u64).await
    }

    pub async fn put_file(&self, path: &Path) -> Result<Artifact, ArtifactError> {
        // One pass: hash while copying into the temporary file.
        let mut input = tokio::fs::File::open(path).await.map_err(io_error(path))?;
        let temp = self.temp_path();
        let mut output = tokio::fs::File::create(&temp)
            .await
            .map_err(io_error(&temp))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = input.read(&mut buffer).await.map_err(io_error(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            output
                .write_all(&buffer[..n])
                .await
                .map_err(io_error(&temp))?;
            size += n as u64;
        }
        output.flush().await.map_err(io_error(&temp))?;
        self.commit(&temp, hex::encode(hasher.finalize()), size)
            .await
    }

    pub async fn get(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactError> {
        let path = self.local_path(artifact)?;
        let bytes = tokio::fs::read(&path).await.map_err(io_error(&path))?;
        matches_hash(artifact, hex::encode(Sha256::digest(&bytes)))?;
        Ok(bytes)
    }

    /// Copies an artifact to `target`, checked against its hash.
    pub(super) async fn copy_to(
        &self,
        artifact: &Artifact,
        target: &Path,
    ) -> Result<(), ArtifactError> {
        let source = self.verified_path(artifact)?;
        tokio::fs::copy(&source, target)
            .await
            .map_err(io_error(target))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ArtifactStore;
    use super::*;

    #[tokio::test]
    async fn content_addressed_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::new(dir.path().join("store")).unwrap();
        let path_of = |a: &Artifact| local.local_path(a).unwrap();
        let store = ArtifactStore::local(dir.path().join("store")).unwrap();
        let a = store.put(b"hello").await.unwrap();
        assert_eq!(
            a.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(a.size_bytes, 5);
        assert!(a.uri.starts_with("file:///"), "{}", a.uri);
        assert_eq!(
            store.put(b"hello").await.unwrap(),
            a,
            "same bytes, same artifact"
        );
        assert_eq!(store.get(&a).await.unwrap(), b"hello");
        assert_eq!(store.verified_path(&a).unwrap(), path_of(&a));
        assert_eq!(store.fetch(&a).await.unwrap(), path_of(&a));

        let file = dir.path().join("input.txt");
        std::fs::write(&file, b"hello").unwrap();
        assert_eq!(store.put_file(&file).await.unwrap(), a);

        std::fs::write(path_of(&a), b"jello").unwrap();
        let error = store.get(&a).await.unwrap_err();
        assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error}");
        let error = store.verified_path(&a).unwrap_err();
        assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error}");
    }

    #[tokio::test]
    async fn another_directory_is_not_this_store() {
        let dir = tempfile::tempdir().unwrap();
        let one = ArtifactStore::local(dir.path().join("one")).unwrap();
        let two = ArtifactStore::local(dir.path().join("two")).unwrap();
        let a = one.put(b"hello").await.unwrap();
        let error = two.get(&a).await.unwrap_err();
        assert!(matches!(error, ArtifactError::UnsupportedUri(_)), "{error}");
        let s3 = Artifact {
            uri: format!("s3://bucket/{}/{}", &a.sha256[..2], a.sha256),
            ..a
        };
        let error = one.verified_path(&s3).unwrap_err();
        assert!(matches!(error, ArtifactError::UnsupportedUri(_)), "{error}");
    }
}
