//! A client of an external Confluent-compatible registry (Confluent Schema Registry,
//! Karapace, or Quark's own over HTTP) that serves the codec as a [`SchemaResolver`]: a cache of
//! every schema registered under any subject, by id and by single-object fingerprint, filled at
//! connect and refreshed on a miss.

use crate::{RegistryError, subject_of};
use apache_avro::Schema;
use futures::future::BoxFuture;
use quark_events::{EventKind, LocalRegistry, SchemaMiss, SchemaResolver};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// A fingerprint that was not found is looked for again only after this long.
const MISS_RETRY: Duration = Duration::from_secs(10);

pub struct RemoteRegistry {
    /// The URL without its credentials, for requests and messages.
    base: String,
    /// User and password from the URL (`http://user:key@host`), sent as HTTP Basic.
    credentials: Option<(String, String)>,
    http: reqwest::Client,
    cache: LocalRegistry,
    /// (subject, version) pairs already loaded.
    loaded: Mutex<HashSet<(String, i64)>>,
    /// Fingerprints recently looked for in vain.
    missed: Mutex<HashMap<[u8; 8], Instant>>,
}

impl RemoteRegistry {
    /// Connects to the registry at `url`, registers every current event schema under
    /// `<topic>-value` (as a serializer with `auto.register.schemas` does) and loads every
    /// version of every subject. Credentials in the URL go as HTTP Basic, as Confluent's
    /// clients send them.
    pub async fn connect(url: &str) -> Result<Arc<RemoteRegistry>, RegistryError> {
        let (base, credentials) = split_credentials(url)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| remote(&base, e))?;
        let registry = Arc::new(RemoteRegistry {
            base,
            credentials,
            http,
            cache: LocalRegistry::empty(),
            loaded: Mutex::new(HashSet::new()),
            missed: Mutex::new(HashMap::new()),
        });
        for kind in EventKind::ALL {
            let id = registry
                .register(&subject_of(*kind), kind.schema_text())
                .await?;
            registry.cache.register(id, kind.schema().clone());
        }
        let loaded = registry.load_all().await?;
        info!(
            url = registry.base,
            schemas = loaded,
            "schema registry connected"
        );
        Ok(registry)
    }

    /// Registers `schema` under `subject`; returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{subject}/versions");
        let reply = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({"schema": schema})),
            )
            .await
            .map_err(|source| RegistryError::Preregistration {
                subject: subject.to_string(),
                source: Box::new(source),
            })?;
        id_in(&self.base, &reply)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| remote(&url, e))?;
        let status = response.status();
        let reply: Value = response.json().await.map_err(|e| remote(&url, e))?;
        if status.is_success() {
            return Ok(reply);
        }
        Err(RegistryError::Remote {
            url,
            reason: format!("{status}: {reply}"),
        })
    }

    /// Loads the versions of every subject not loaded yet; returns how many.
    async fn load_all(&self) -> Result<usize, RegistryError> {
        let subjects = self.call(reqwest::Method::GET, "/subjects", None).await?;
        let mut count = 0;
        for subject in subjects
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let versions = self
                .call(
                    reqwest::Method::GET,
                    &format!("/subjects/{subject}/versions"),
                    None,
                )
                .await?;
            for version in versions
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
            {
                let key = (subject.to_string(), version);
                if self.loaded.lock().expect("loaded lock").contains(&key) {
                    continue;
                }
                let path = format!("/subjects/{subject}/versions/{version}");
                let found = self.call(reqwest::Method::GET, &path, None).await?;
                self.learn(id_in(&self.base, &found)?, &found);
                self.loaded.lock().expect("loaded lock").insert(key);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Fetches the schema of `id`.
    async fn load_id(&self, id: u32) -> Result<(), RegistryError> {
        let found = self
            .call(reqwest::Method::GET, &format!("/schemas/ids/{id}"), None)
            .await?;
        self.learn(id, &found);
        Ok(())
    }

    /// Caches the `schema` of a registry reply under `id` (schemas that are not Avro are
    /// skipped: no Quark event uses them).
    fn learn(&self, id: u32, reply: &Value) {
        let text = reply
            .get("schema")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match Schema::parse_str(text) {
            Ok(schema) => self.cache.register(id, schema),
            Err(error) => warn!(id, %error, "registry schema is not Avro; skipped"),
        }
    }

    /// Whether `fingerprint` was not looked for in vain recently (and notes that it is now):
    /// a stream of messages with an unknown fingerprint reloads the registry only now and then.
    fn first_miss_in_a_while(&self, fingerprint: [u8; 8]) -> bool {
        let mut missed = self.missed.lock().expect("missed lock");
        if missed
            .get(&fingerprint)
            .is_some_and(|at| at.elapsed() < MISS_RETRY)
        {
            return false;
        }
        missed.insert(fingerprint, Instant::now());
        true
    }

    async fn look_up(&self, miss: SchemaMiss) -> bool {
        let result = match miss {
            SchemaMiss::Id(id) => self.load_id(id).await,
            SchemaMiss::Fingerprint(fingerprint) => {
                if !self.first_miss_in_a_while(fingerprint) {
                    return false;
                }
                self.load_all().await.map(drop)
            }
        };
        if let Err(error) = result {
            warn!(label = error.label(), %error, ?miss, "schema lookup failed");
        }
        match miss {
            SchemaMiss::Id(id) => self.cache.contains(id),
            SchemaMiss::Fingerprint(f) => self.cache.schema_by_fingerprint(&f).is_some(),
        }
    }
}

/// `url` without its user and password (trailing slash dropped), and them percent-decoded.
pub fn split_credentials(url: &str) -> Result<(String, Option<(String, String)>), RegistryError> {
    let mut parsed = url::Url::parse(url).map_err(|e| RegistryError::Remote {
        url: "(the schema registry's URL)".into(),
        reason: e.to_string(),
    })?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = match (parsed.username(), parsed.password()) {
        ("", None) => None,
        (user, password) => Some((decode(user), decode(password.unwrap_or_default()))),
    };
    // Neither can fail on an http(s) URL, which has a host.
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((
        parsed.as_str().trim_end_matches('/').to_string(),
        credentials,
    ))
}

/// `url` as it may be shown: without its credentials.
pub fn shown_url(url: &str) -> String {
    if url.is_empty() {
        return String::new();
    }
    split_credentials(url).map_or_else(|_| "(an unreadable URL)".into(), |(base, _)| base)
}

fn remote(url: &str, error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Remote {
        url: url.to_string(),
        reason: error.to_string(),
    }
}

fn id_in(url: &str, reply: &Value) -> Result<u32, RegistryError> {
    reply
        .get("id")
        .and_then(Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| remote(url, format!("no schema id in {reply}")))
}

impl SchemaResolver for RemoteRegistry {
    fn schema(&self, id: u32) -> Option<Arc<Schema>> {
        self.cache.schema(id)
    }
    fn schema_by_fingerprint(&self, fingerprint: &[u8; 8]) -> Option<Arc<Schema>> {
        self.cache.schema_by_fingerprint(fingerprint)
    }
    fn id_of(&self, kind: EventKind) -> Option<u32> {
        self.cache.id_of(kind)
    }
    fn refresh(&self, miss: SchemaMiss) -> BoxFuture<'_, bool> {
        Box::pin(self.look_up(miss))
    }
}
