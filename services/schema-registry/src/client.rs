//! A client of an external Confluent-compatible registry (Confluent Schema Registry,
//! Karapace, or Quark's own over HTTP) that serves the codec as a [`SchemaResolver`]: a cache of
//! every schema registered under any subject, by id and by single-object fingerprint, filled at
//! connect and refreshed on a miss.

use crate::http::{RegistryHttp, remote};
use crate::{RegistryError, subject_of};
use apache_avro::Schema;
use futures::future::BoxFuture;
use quark_events::{EventKind, LocalRegistry, SchemaMiss, SchemaResolver};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A fingerprint that was not found is looked for again only after this long.
const MISS_RETRY: Duration = Duration::from_secs(10);

pub struct RemoteRegistry {
    http: RegistryHttp,
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
        let registry = Arc::new(RemoteRegistry {
            http: RegistryHttp::new(url)?,
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
            url = registry.http.url(),
            schemas = loaded,
            "schema registry connected"
        );
        Ok(registry)
    }

    /// Registers `schema` under `subject`; returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let reply = self
            .http
            .post(
                &["subjects", subject, "versions"],
                json!({"schema": schema}),
            )
            .await
            .map_err(|source| RegistryError::Preregistration {
                subject: subject.to_string(),
                source: Box::new(source),
            })?;
        id_in(self.http.url(), &reply)
    }

    /// Loads the versions of every subject not loaded yet; returns how many.
    async fn load_all(&self) -> Result<usize, RegistryError> {
        let subjects = self.http.get(&["subjects"], None).await?;
        let mut count = 0;
        for subject in subjects
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let versions = self
                .http
                .get(&["subjects", subject, "versions"], None)
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
                let path = ["subjects", subject, "versions", &version.to_string()];
                let found = self.http.get(&path, None).await?;
                self.learn(id_in(self.http.url(), &found)?, &found);
                self.loaded.lock().expect("loaded lock").insert(key);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Fetches the schema of `id`.
    async fn load_id(&self, id: u32) -> Result<(), RegistryError> {
        let found = self
            .http
            .get(&["schemas", "ids", &id.to_string()], None)
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
