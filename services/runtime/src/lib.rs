//! What every Quark process needs, whichever services it runs: configuration, telemetry,
//! the database and the artifact store.

pub mod artifacts;
pub mod config;
pub mod db;
pub mod metrics;
pub mod telemetry;

pub use artifacts::{ArtifactError, ArtifactStore, LocalStore, S3Config, S3Store};
pub use config::{ConfigError, Settings};
