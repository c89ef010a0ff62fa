//! A real registry for tests: the REST server on 127.0.0.1:0 over a SQLite file.

#![allow(dead_code)]

use quark_schema_registry::{ApiKeys, SchemaRegistryMigration, Store};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use serde_json::Value;
use std::path::Path;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(SchemaRegistryMigration)]
    }
}

/// Opens (creating if needed) the SQLite database in `dir`, with the registry's tables.
pub async fn database(dir: &Path) -> DatabaseConnection {
    let url = format!("sqlite://{}?mode=rwc", dir.join("registry.db").display());
    let db = Database::connect(&url).await.unwrap();
    db.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000;")
        .await
        .unwrap();
    Migrator::up(&db, None).await.unwrap();
    db
}

/// The key the test server's writes need.
pub const KEY: &str = "registry-test-key";

/// The registry's HTTP server on a free port.
pub struct Server {
    pub url: String,
    pub store: Store,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(dir: &Path) -> Server {
        let store = Store::open(database(dir).await).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (store, shutdown) = (store.clone(), shutdown.clone());
            async move {
                quark_schema_registry::serve(listener, store, ApiKeys::new([KEY]), shutdown)
                    .await
                    .unwrap()
            }
        });
        Server {
            url,
            store,
            shutdown,
            task,
        }
    }

    /// Stops the server and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }

    /// The URL with the key in it, as Confluent's clients take credentials.
    pub fn url_with_key(&self) -> String {
        self.url.replace("http://", &format!("http://quark:{KEY}@"))
    }

    /// A request with Confluent's content type and the key; returns the status and the JSON
    /// reply.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(KEY), method, path, body).await
    }

    /// A request with `key` as its bearer token, or none.
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Registers `schema` (JSON) under `subject`; returns the status and the reply.
    pub async fn register(&self, subject: &str, schema: &Value) -> (u16, Value) {
        let body = serde_json::json!({"schema": schema.to_string()});
        self.post(&format!("/subjects/{subject}/versions"), body)
            .await
    }
}

/// A record schema `name` with `fields` (JSON field objects).
pub fn record(name: &str, fields: Value) -> Value {
    serde_json::json!({"type": "record", "name": name, "namespace": "test", "fields": fields})
}
