//! A Confluent-compatible schema registry, and the registry client the codec resolves writer
//! schemas through.
//!
//! - [`api`]: the REST API Confluent's clients speak (`/subjects`, `/schemas/ids`,
//!   `/compatibility`, `/config`), on axum.
//! - [`store`]: subjects, versions, global ids and compatibility levels in the database
//!   (sea-orm: SQLite or PostgreSQL), with a cache of every registered schema by id and by
//!   single-object fingerprint ([`store::StoreResolver`]).
//! - [`compat`]: compatibility levels, checked with apache-avro's schema compatibility.
//! - [`client`]: [`client::RemoteRegistry`], the same resolver over HTTP for an external
//!   registry (Confluent Schema Registry, Karapace), through [`http::RegistryHttp`].
//! - [`preregister`]: every current event schema as subject `<topic>-value`.

pub mod api;
pub mod client;
pub mod compat;
mod error;
pub mod http;
pub mod store;
pub mod tables;

pub use client::RemoteRegistry;
pub use compat::CompatibilityLevel;
pub use error::RegistryError;
pub use store::{Store, StoreResolver};
pub use tables::SchemaRegistryMigration;

pub use quark_api_keys::ApiKeys;
use quark_events::EventKind;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The subject of an event type's value schema (Confluent's `TopicNameStrategy`).
pub fn subject_of(kind: EventKind) -> String {
    format!("{}-value", kind.topic())
}

/// Registers every current event schema under `<topic>-value`. Idempotent: an unchanged schema
/// keeps its id and version; a changed one becomes a new version only if it is compatible.
pub async fn preregister(store: &Store) -> Result<(), RegistryError> {
    for kind in EventKind::ALL {
        let subject = subject_of(*kind);
        let id = store
            .register(&subject, kind.schema_text())
            .await
            .map_err(|source| RegistryError::Preregistration {
                subject: subject.clone(),
                source: Box::new(source),
            })?;
        info!(subject, id, "schema registered");
    }
    Ok(())
}

/// Serves the REST API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    keys: ApiKeys,
    shutdown: CancellationToken,
) -> Result<(), RegistryError> {
    let address = listener.local_addr().map_err(RegistryError::Io)?;
    info!(url = %format!("http://{address}"), "schema registry listening");
    axum::serve(listener, api::router(store, keys))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(RegistryError::Io)
}
