//! The object-storage backend: S3 or any S3-compatible server (MinIO, moto), through the
//! `object_store` crate. Objects are named `<prefix>/<first two hex digits>/<sha256>` and
//! addressed by `s3://bucket/prefix/ab/abcd…` URIs. Libraries read files, so artifacts
//! they need as files are downloaded into a local cache, `<cache>/<ab>/<sha256>`: written
//! under a temporary name, checked against the hash, then renamed into place, so no reader
//! ever sees a half-written or unverified file.

use super::{ArtifactError, hash_file, io_error, matches_hash};
use crate::config::ArtifactSettings;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use quark_events::Artifact;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Files larger than this are uploaded in parts of this size (S3 wants parts of 5 MiB or more).
pub const PART_BYTES: usize = 8 << 20;
/// Parts in flight at once: what an upload holds in memory is bounded by this many parts.
const UPLOAD_CONCURRENCY: usize = 4;
const READ_BUFFER: usize = 1 << 20;

/// Where the objects are and how to reach them. Empty strings defer to the standard `AWS_*`
/// environment variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).
#[derive(Clone, Default)]
pub struct S3Config {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allow plain-HTTP endpoints (local MinIO and test servers).
    pub allow_http: bool,
    /// Local directory of verified downloads.
    pub cache_dir: PathBuf,
}

impl S3Config {
    pub fn from_settings(settings: &ArtifactSettings, cache_dir: PathBuf) -> S3Config {
        S3Config {
            url: settings.url.trim().to_string(),
            endpoint: settings.endpoint.clone(),
            region: settings.region.clone(),
            access_key_id: settings.access_key_id.clone(),
            secret_access_key: settings.secret_access_key.clone(),
            allow_http: settings.allow_http,
            cache_dir,
        }
    }

    fn builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !self.endpoint.is_empty() {
            builder = builder.with_endpoint(&self.endpoint);
        }
        if !self.region.is_empty() {
            builder = builder.with_region(&self.region);
        }
        if !self.access_key_id.is_empty() {
            builder = builder.with_access_key_id(&self.access_key_id);
        }
        if !self.secret_access_key.is_empty() {
            builder = builder.with_secret_access_key(&self.secret_access_key);
        }
        if self.allow_http {
            builder = builder.with_allow_http(true);
        }
        builder
    }
}

pub struct S3Store {
    client: Arc<dyn ObjectStore>,
    /// For a client of its own where no runtime can drive the shared one (see `fetch_blocking`).
    builder: Box<AmazonS3Builder>,
    bucket: String,
    prefix: ObjectPath,
    cache: PathBuf,
}

fn valid_sha256(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl S3Store {
    pub fn new(config: S3Config) -> Result<S3Store, ArtifactError> {
        let bad =
            |why: String| ArtifactError::Config(format!("artifacts.url {:?}: {why}", config.url));
        let url = url::Url::parse(&config.url).map_err(|e| bad(e.to_string()))?;
        if url.scheme() != "s3" {
            return Err(bad("not an s3:// URL".into()));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("names no bucket".into()))?
            .to_string();
        let prefix =
            ObjectPath::parse(url.path().trim_matches('/')).map_err(|e| bad(e.to_string()))?;
        let builder = config.builder(&bucket);
        let client = builder
            .clone()
            .build()
            .map_err(|source| ArtifactError::ObjectStore {
                uri: config.url.clone(),
                source,
            })?;
        let cache = &config.cache_dir;
        std::fs::create_dir_all(cache).map_err(io_error(cache))?;
        let cache = cache.canonicalize().map_err(io_error(cache))?;
        Ok(S3Store {
            client: Arc::new(client),
            builder: Box::new(builder),
            bucket,
            prefix,
            cache,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        match self.prefix.as_ref() {
            "" => format!("s3://{}", self.bucket),
            prefix => format!("s3://{}/{prefix}", self.bucket),
        }
    }

    /// The local cache of verified downloads.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    fn path_of(&self, sha256: &str) -> ObjectPath {
        self.prefix.clone().join(&sha256[..2]).join(sha256)
    }

    fn uri_of(&self, path: &ObjectPath) -> String {
        format!("s3://{}/{path}", self.bucket)
    }

    fn cache_path(&self, sha256: &str) -> PathBuf {
        self.cache.join(&sha256[..2]).join(sha256)
    }

    fn failed(uri: &str) -> impl FnOnce(object_store::Error) -> ArtifactError + use<> {
        let uri = uri.to_string();
        move |source| ArtifactError::ObjectStore { uri, source }
    }

    /// The object an artifact of this store names: exactly `<prefix>/<ab>/<sha256>` in this
    /// bucket, or `UnsupportedUri`.
    fn location_of(&self, artifact: &Artifact) -> Result<ObjectPath, ArtifactError> {
        let unsupported = || ArtifactError::UnsupportedUri(artifact.uri.clone());
        let key = artifact
            .uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.strip_prefix(self.bucket.as_str()))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(unsupported)?;
        let path = ObjectPath::parse(key).map_err(|_| unsupported())?;
        if !path.prefix_matches(&self.prefix) {
            return Err(unsupported());
        }
        if !valid_sha256(&artifact.sha256) {
            return Err(ArtifactError::InvalidHash {
                uri: artifact.uri.clone(),
                sha256: artifact.sha256.clone(),
            });
        }
        if path != self.path_of(&artifact.sha256) {
            return Err(unsupported());
        }
        Ok(path)
    }

    fn artifact(&self, sha256: String, size: u64) -> (ObjectPath, Artifact) {
        let path = self.path_of(&sha256);
        let artifact = Artifact {
            uri: self.uri_of(&path),
            sha256,
            size_bytes: size as i64,
        };
        (path, artifact)
    }

    /// Whether the object is already stored (content addressing: same name, same bytes).
    async fn holds(&self, path: &ObjectPath, artifact: &Artifact) -> Result<bool, ArtifactError> {
        match self.client.head(path).await {
            Ok(meta) if meta.size as i64 == artifact.size_bytes => Ok(true),
            Ok(meta) => {
                warn!(uri = %artifact.uri, stored_bytes = meta.size, expected_bytes = artifact.size_bytes, "replacing an object of the wrong size");
                Ok(false)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(Self::failed(&artifact.uri)(source)),
        }
    }

    pub async fn put(&self, bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let (path, artifact) =
            self.artifact(hex::encode(Sha256::digest(bytes)), bytes.len() as u64);
        if self.holds(&path, &artifact).await? {
            debug!(uri = %artifact.uri, "already stored");
            return Ok(artifact);
        }
        self.client
            .put(&path, PutPayload::from(bytes.to_vec()))
            .await
            .map_err(Self::failed(&artifact.uri))?;
        info!(uri = %artifact.uri, bytes = bytes.len(), "uploaded");
        Ok(artifact)
    }

    /// Hashes the file first (its name is its hash), then uploads it unless it is already
    /// there: in one request up to [`PART_BYTES`], in parts above.
    pub async fn put_file(&self, file: &Path) -> Result<Artifact, ArtifactError> {
        let (sha256, size) = hash_stream(file).await?;
        let (path, artifact) = self.artifact(sha256, size);
        if self.holds(&path, &artifact).await? {
            debug!(uri = %artifact.uri, file = %file.display(), "already stored");
            return Ok(artifact);
        }
        if size <= PART_BYTES as u64 {
            let bytes = tokio::fs::read(file).await.map_err(io_error(file))?;
            if hex::encode(Sha256::digest(&bytes)) != artifact.sha256 {
                return Err(changed(file));
            }
            self.client
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(Self::failed(&artifact.uri))?;
        } else {
            self.put_parts(file, &path, &artifact).await?;
        }
        info!(uri = %artifact.uri, file = %file.display(), bytes = size, "uploaded");
        Ok(artifact)
    }

    /// A multipart upload, read from the file as it goes; aborted on any failure (or if the
    /// file no longer hashes to its name), so no partial object is ever visible.
    async fn put_parts(
        &self,
        file: &Path,
        path: &ObjectPath,
        artifact: &Artifact,
    ) -> Result<(), ArtifactError> {
        let failed = || Self::failed(&artifact.uri);
        let upload = self.client.put_multipart(path).await.map_err(failed())?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let streamed = async {
            let mut input = tokio::fs::File::open(file).await.map_err(io_error(file))?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; READ_BUFFER];
            loop {
                let n = input.read(&mut buffer).await.map_err(io_error(file))?;
                if n == 0 {
                    return Ok(hex::encode(hasher.finalize()));
                }
                hasher.update(&buffer[..n]);
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(failed())?;
                writer.write(&buffer[..n]);
            }
        }
        .await;
        match streamed {
            Ok(found) if found == artifact.sha256 => {
                writer.finish().await.map_err(failed())?;
                Ok(())
            }
            outcome => {
                if let Err(e) = writer.abort().await {
                    warn!(uri = %artifact.uri, error = %e, "cannot abort a multipart upload");
                }
                Err(outcome.err().unwrap_or_else(|| changed(file)))
            }
        }
    }

    /// Reads an object into memory (manifests, small things), checking its hash.
    pub async fn get(&self, artifact: &Artifact) -> Result<Vec<u8>, ArtifactError> {
        let path = self.location_of(artifact)?;
        let failed = || Self::failed(&artifact.uri);
        let bytes = self
            .client
            .get(&path)
            .await
            .map_err(failed())?
            .bytes()
            .await
            .map_err(failed())?;
        matches_hash(artifact, hex::encode(Sha256::digest(&bytes)))?;
        Ok(bytes.to_vec())
    }

    /// Whether the cache holds a good copy; a bad one is removed.
    fn cached(&self, artifact: &Artifact, file: &Path) -> Result<bool, ArtifactError> {
        if !file.exists() {
            return Ok(false);
        }
        if matches_hash(artifact, hash_file(file)?).is_ok() {
            return Ok(true);
        }
        warn!(file = %file.display(), uri = %artifact.uri, "a cached artifact is corrupt; downloading it again");
        std::fs::remove_file(file).map_err(io_error(file))?;
        Ok(false)
    }

    /// A verified local copy of the artifact, from the cache or downloaded into it.
    pub async fn fetch(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        let path = self.location_of(artifact)?;
        let cached = self.cache_path(&artifact.sha256);
        if !self.cached(artifact, &cached)? {
            download(self.client.as_ref(), &path, artifact, &cached).await?;
        }
        Ok(cached)
    }

    /// [`S3Store::fetch`] for synchronous code: on a multi-threaded runtime the download runs
    /// on it (the worker handed off with `block_in_place`); elsewhere (no runtime, or one
    /// this thread drives) on a thread of its own with a runtime and a client of its own.
    pub fn fetch_blocking(&self, artifact: &Artifact) -> Result<PathBuf, ArtifactError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let path = self.location_of(artifact)?;
        let cached = self.cache_path(&artifact.sha256);
        if self.cached(artifact, &cached)? {
            return Ok(cached);
        }
        if let Ok(handle) = Handle::try_current()
            && handle.runtime_flavor() == RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(|| handle.block_on(self.fetch(artifact)));
        }
        let on_own_thread = || -> Result<PathBuf, ArtifactError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_error(&cached))?;
            let client = self
                .builder
                .clone()
                .build()
                .map_err(Self::failed(&artifact.uri))?;
            runtime.block_on(download(&client, &path, artifact, &cached))?;
            Ok(cached.clone())
        };
        std::thread::scope(|scope| {
            scope
                .spawn(on_own_thread)
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Writes a verified copy of the artifact at `target`: copied from the cache when it is
    /// there, otherwise downloaded straight to `target` (a directory's files are not cached
    /// twice).
    pub(super) async fn copy_to(
        &self,
        artifact: &Artifact,
        target: &Path,
    ) -> Result<(), ArtifactError> {
        let path = self.location_of(artifact)?;
        let cached = self.cache_path(&artifact.sha256);
        if self.cached(artifact, &cached)? {
            tokio::fs::copy(&cached, target)
                .await
                .map_err(io_error(target))?;
            return Ok(());
        }
        download(self.client.as_ref(), &path, artifact, target).await
    }
}

fn changed(file: &Path) -> ArtifactError {
    ArtifactError::Io {
        path: file.to_path_buf(),
        source: std::io::Error::other("the file changed while it was being stored"),
    }
}

/// The SHA-256 and size of a file, read in chunks.
async fn hash_stream(file: &Path) -> Result<(String, u64), ArtifactError> {
    let mut input = tokio::fs::File::open(file).await.map_err(io_error(file))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buffer).await.map_err(io_error(file))?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), size));
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
}

/// Streams an object to a temporary file beside `target`, checks its hash and renames it
/// into place; on any failure the temporary file is removed.
async fn download(
    client: &dyn ObjectStore,
    path: &ObjectPath,
    artifact: &Artifact,
    target: &Path,
) -> Result<(), ArtifactError> {
    let dir = target.parent().expect("download targets have a parent");
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_error(dir))?;
    let temp = dir.join(format!(".incoming-{}", quark_events::Id::random()));
    let written = stream_to(client, path, artifact, &temp).await;
    let outcome = match written {
        Ok(found) => matches_hash(artifact, found),
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(e);
    }
    tokio::fs::rename(&temp, target)
        .await
        .map_err(io_error(target))?;
    info!(uri = %artifact.uri, file = %target.display(), bytes = artifact.size_bytes, "downloaded");
    Ok(())
}

/// Writes the object's bytes to `file`; returns their SHA-256.
async fn stream_to(
    client: &dyn ObjectStore,
    path: &ObjectPath,
    artifact: &Artifact,
    file: &Path,
) -> Result<String, ArtifactError> {
    let failed = || S3Store::failed(&artifact.uri);
    let mut stream = client.get(path).await.map_err(failed())?.into_stream();
    let mut output = tokio::fs::File::create(file)
        .await
        .map_err(io_error(file))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed())?;
        hasher.update(&chunk);
        output.write_all(&chunk).await.map_err(io_error(file))?;
    }
    output.flush().await.map_err(io_error(file))?;
    output.sync_all().await.map_err(io_error(file))?;
    Ok(hex::encode(hasher.finalize()))
}
