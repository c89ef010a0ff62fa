//! The artifact store on S3, against a real S3-protocol server (moto's server mode).

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use quark_events::Artifact;
use quark_runtime::Settings;
use quark_runtime::artifacts::testing::S3Server;
use quark_runtime::artifacts::{ArtifactError, ArtifactStore, PART_BYTES};
use std::path::Path;

const BUCKET: &str = "quark-artifacts";
const URL: &str = "s3://quark-artifacts/team/prod";

struct Fixture {
    server: S3Server,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn start() -> Fixture {
        let server = S3Server::start();
        server.create_bucket(BUCKET);
        Fixture {
            server,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A store instance of its own, with a fresh download cache named `name`.
    fn store(&self, name: &str) -> ArtifactStore {
        let settings = self.server.settings(URL, &self.dir.path().join(name));
        ArtifactStore::from_settings(&settings, self.dir.path()).unwrap()
    }

    fn cache(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name).canonicalize().unwrap()
    }

    async fn objects(&self) -> Vec<String> {
        let client = self.server.client(BUCKET);
        let mut names: Vec<String> = client
            .list(Some(&ObjectPath::from("team/prod")))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }
}

/// Deterministic bytes that do not compress or repeat.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_is_content_addressed_and_deduplicated() {
    let fixture = Fixture::start();
    let store = fixture.store("cache");
    assert_eq!(store.location(), URL);

    let a = store.put(b"hello").await.unwrap();
    let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    assert_eq!(a.sha256, sha);
    assert_eq!(a.size_bytes, 5);
    assert_eq!(a.uri, format!("{URL}/2c/{sha}"));
    assert_eq!(store.get(&a).await.unwrap(), b"hello");

    assert_eq!(
        store.put(b"hello").await.unwrap(),
        a,
        "same bytes, same artifact"
    );
    let file = fixture.dir.path().join("hello.txt");
    std::fs::write(&file, b"hello").unwrap();
    assert_eq!(store.put_file(&file).await.unwrap(), a);
    assert_eq!(fixture.objects().await, [format!("team/prod/2c/{sha}")]);

    let path = store.fetch(&a).await.unwrap();
    assert_eq!(path, fixture.cache("cache").join("2c").join(sha));
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    assert_eq!(store.verified_path(&a).unwrap(), path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_is_detected_and_never_cached() {
    let fixture = Fixture::start();
    let writer = fixture.store("writer");
    let a = writer.put(b"hello").await.unwrap();
    let client = fixture.server.client(BUCKET);
    let location = ObjectPath::from(format!("team/prod/2c/{}", a.sha256));
    client
        .put(&location, PutPayload::from_static(b"jello"))
        .await
        .unwrap();

    let reader = fixture.store("reader");
    let error = reader.get(&a).await.unwrap_err();
    assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error}");
    let error = reader.fetch(&a).await.unwrap_err();
    assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error}");
    let error = reader.verified_path(&a).unwrap_err();
    assert!(matches!(error, ArtifactError::Corrupt { .. }), "{error}");
    assert!(
        files_under(&fixture.cache("reader")).is_empty(),
        "no unverified file is left in the cache"
    );

    // A cached copy that rots on disk is noticed and fetched again.
    client
        .put(&location, PutPayload::from_static(b"hello"))
        .await
        .unwrap();
    let path = reader.fetch(&a).await.unwrap();
    std::fs::write(&path, b"jello").unwrap();
    assert_eq!(reader.fetch(&a).await.unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_written_by_one_instance_is_read_by_another() {
    let fixture = Fixture::start();
    let source = fixture.dir.path().join("checkpoint");
    std::fs::create_dir_all(&source).unwrap();
    let files = [
        ("config.json", b"{\"n_layer\": 1}".to_vec()),
        ("model.safetensors", noise(100_000, 7)),
        ("tokenizer.json", b"{}".to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(source.join(name), bytes).unwrap();
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let manifest = fixture
        .store("trainer")
        .put_dir(&source, &names)
        .await
        .unwrap();
    assert_eq!(
        fixture.objects().await.len(),
        4,
        "three files and a manifest"
    );

    let gateway = fixture.store("gateway");
    let dest = fixture.dir.path().join("models").join("m1");
    assert_eq!(gateway.get_dir(&manifest, &dest).await.unwrap(), dest);
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(dest.join(name)).unwrap(), bytes, "{name}");
    }
    assert!(dest.join(".complete").exists());
    assert_eq!(
        gateway.get_dir(&manifest, &dest).await.unwrap(),
        dest,
        "a second read finds it in place"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_is_uploaded_in_parts_and_read_back_whole() {
    let fixture = Fixture::start();
    let bytes = noise(PART_BYTES + PART_BYTES / 2 + 3, 11);
    let file = fixture.dir.path().join("large.bin");
    std::fs::write(&file, &bytes).unwrap();
    let a = fixture.store("writer").put_file(&file).await.unwrap();
    assert_eq!(a.size_bytes, bytes.len() as i64);

    let client = fixture.server.client(BUCKET);
    let meta = client
        .head(&ObjectPath::from(format!(
            "team/prod/{}/{}",
            &a.sha256[..2],
            a.sha256
        )))
        .await
        .unwrap();
    assert_eq!(meta.size, bytes.len() as u64);
    let etag = meta.e_tag.unwrap_or_default();
    assert!(
        etag.contains("-2"),
        "a two-part upload's ETag ends in -2: {etag}"
    );

    let reader = fixture.store("reader");
    let path = reader.fetch(&a).await.unwrap();
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the same bytes come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uris_of_other_stores_are_refused() {
    let fixture = Fixture::start();
    let store = fixture.store("cache");
    let a = store.put(b"hello").await.unwrap();
    let elsewhere = |uri: String| Artifact { uri, ..a.clone() };
    let tail = format!("2c/{}", a.sha256);
    for uri in [
        format!("file:///tmp/{tail}"),
        format!("s3://other-bucket/team/prod/{tail}"),
        format!("s3://quark-artifacts/team/dev/{tail}"),
        format!("s3://quark-artifacts/{tail}"),
        format!("s3://quark-artifacts/team/prod/ff/{}", a.sha256),
        format!("https://quark-artifacts.s3.amazonaws.com/team/prod/{tail}"),
    ] {
        let other = elsewhere(uri.clone());
        let error = store.get(&other).await.unwrap_err();
        assert!(
            matches!(error, ArtifactError::UnsupportedUri(_)),
            "{uri}: {error}"
        );
        let error = store.fetch(&other).await.unwrap_err();
        assert!(
            matches!(error, ArtifactError::UnsupportedUri(_)),
            "{uri}: {error}"
        );
    }
    let local = ArtifactStore::local(fixture.dir.path().join("local")).unwrap();
    let error = local.get(&a).await.unwrap_err();
    assert!(matches!(error, ArtifactError::UnsupportedUri(_)), "{error}");

    let forged = Artifact {
        sha256: "../../etc/passwd".into(),
        ..a.clone()
    };
    let error = store.fetch(&forged).await.unwrap_err();
    assert!(
        matches!(error, ArtifactError::InvalidHash { .. }),
        "{error}"
    );
}

/// Synchronous callers outside any runtime (and on a runtime their thread drives) download
/// on a thread of their own.
#[test]
fn verified_path_works_without_a_runtime() {
    let fixture = Fixture::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = runtime
        .block_on(fixture.store("writer").put(b"shard"))
        .unwrap();
    let reader = fixture.store("reader");
    let path = reader.verified_path(&a).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"shard");

    let other = fixture.store("other");
    let on_current_thread = runtime.block_on(async { other.verified_path(&a) }).unwrap();
    assert_eq!(std::fs::read(on_current_thread).unwrap(), b"shard");
}

#[test]
fn settings_name_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let store = settings.artifact_store().unwrap();
    assert!(matches!(store, ArtifactStore::Local(_)));
    let expected = dir.path().join("artifacts").canonicalize().unwrap();
    assert_eq!(store.location(), format!("file://{}", expected.display()));

    let mut s3 = settings.clone();
    s3.artifacts.url = URL.into();
    s3.artifacts.endpoint = "http://127.0.0.1:1".into();
    s3.artifacts.region = "us-east-1".into();
    let store = s3.artifact_store().unwrap();
    assert!(matches!(store, ArtifactStore::S3(_)));
    assert_eq!(store.location(), URL);
    assert!(
        dir.path().join("artifact-cache").is_dir(),
        "the cache is under the data dir"
    );

    let mut bad = settings.clone();
    bad.artifacts.url = "gs://bucket".into();
    let error = bad.artifact_store().err().unwrap();
    assert!(matches!(error, ArtifactError::Config(_)), "{error}");
}
