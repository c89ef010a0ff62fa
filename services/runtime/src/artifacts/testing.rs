//! A real S3-protocol server for tests: moto's server mode (PyPI `moto[server]`, installed in
//! the venv `QUARK_PYTHON` names by `scripts/bootstrap`) on a free port of 127.0.0.1, killed
//! when dropped.

use crate::config::ArtifactSettings;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "testing";
const REGION: &str = "us-east-1";

pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    address: String,
    log: PathBuf,
    child: Child,
}

impl S3Server {
    /// Starts the server and waits until it answers S3 requests.
    pub fn start() -> S3Server {
        let python = std::env::var("QUARK_PYTHON").expect(
            "QUARK_PYTHON must name the venv's python, with moto[server] installed \
             (scripts/env sets it, scripts/bootstrap installs it)",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::env::temp_dir().join(format!("quark-moto-{port}.log"));
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file for moto"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} -m moto.server: {e}"));
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            address: format!("127.0.0.1:{port}"),
            log,
            child,
        };
        server.wait_until_ready(Duration::from_secs(60));
        server
    }

    fn wait_until_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        // The positive signal: ListBuckets answers 200.
        while self.request("GET", "/").ok() != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "moto.server exited ({status}) before answering; is moto[server] installed \
                     in the venv (scripts/bootstrap)? Its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "moto.server did not answer on {} within {timeout:?}",
                self.endpoint
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One plain HTTP/1.1 request (moto does not check signatures); returns the status code.
    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut stream = TcpStream::connect(&self.address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let head = String::from_utf8_lossy(&response);
        head.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:.80}")))
    }

    /// Creates a bucket (CreateBucket, in us-east-1).
    pub fn create_bucket(&self, bucket: &str) {
        let status = self
            .request("PUT", &format!("/{bucket}"))
            .expect("CreateBucket");
        assert_eq!(status, 200, "CreateBucket {bucket}");
    }

    /// Settings of an artifact store at `url` (`s3://bucket/prefix`) on this server, with its
    /// download cache in `cache_dir`.
    pub fn settings(&self, url: &str, cache_dir: &Path) -> ArtifactSettings {
        ArtifactSettings {
            url: url.to_string(),
            endpoint: self.endpoint.clone(),
            region: REGION.into(),
            access_key_id: KEY.into(),
            secret_access_key: KEY.into(),
            allow_http: true,
            cache_dir: cache_dir.display().to_string(),
            ..ArtifactSettings::default()
        }
    }

    /// Object-store options naming this server, in the keys LanceDB and `object_store`
    /// read.
    pub fn storage_options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_region", REGION),
            ("aws_access_key_id", KEY),
            ("aws_secret_access_key", KEY),
            ("allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A plain S3 client of `bucket`, to reach behind a store's back.
    pub fn client(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_access_key_id(KEY)
            .with_secret_access_key(KEY)
            .with_allow_http(true)
            .build()
            .expect("an S3 client of the test server")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
