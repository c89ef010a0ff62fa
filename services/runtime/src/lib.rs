//! What every Quark process needs, whichever services it runs: configuration, telemetry,
//! the database and the artifact store.

pub mod artifacts;
pub mod config;
pub mod db;
pub mod telemetry;

pub use artifacts::{ArtifactError, ArtifactStore, LocalStore};
pub use config::{ConfigError, Settings};
