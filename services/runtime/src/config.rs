//! Settings, layered: built-in defaults < `quark.toml` < `QUARK__SECTION__KEY` environment
//! variables (e.g. `QUARK__BUS__BROKERS=kafka-1:9092`). Unknown keys and bad values are
//! errors that name the key.

use quark_events::bus::BusConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded broker, the SQLite database and the artifacts live.
    pub data_dir: PathBuf,
    pub bus: BusConfig,
    pub broker: BrokerSettings,
    pub database: DatabaseSettings,
    pub artifacts: ArtifactSettings,
    pub telemetry: TelemetrySettings,
    pub curate: CurateSettings,
}

/// What the curator keeps and how it deduplicates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurateSettings {
    /// ISO 639-3 codes of the languages kept (documents whose language is unsure are kept).
    pub languages: Vec<String>,
    /// Documents with fewer words are rejected (quality).
    pub min_words: usize,
    /// Toxicity score (weighted lexicon hits per 100 words) above which a document is rejected.
    pub max_toxicity: f64,
    pub scrub_pii: bool,
    /// Share of kept documents held out for validation.
    pub validation_fraction: f64,
    /// Vocabulary of the tokenizer trained on each dataset.
    pub tokenizer_vocab_size: usize,
    /// Near-duplicate detection; changing it needs a new index (`<data_dir>/curate/index`).
    pub minhash: quark_curate::minhash::MinHashConfig,
}

/// The embedded broker `quark up` starts when `bus.brokers` is empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Address it listens on; IPv4 (Tansu does not listen on IPv6).
    pub listen: String,
    /// The broker executable; empty: `quark-broker` next to the `quark` executable.
    #[serde(default)]
    pub command: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`; empty: SQLite in the data directory.
    #[serde(default)]
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSettings {
    /// Root directory of the local content-addressed store; empty: `<data_dir>/artifacts`.
    #[serde(default)]
    pub root: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Log filter in `RUST_LOG` syntax, e.g. `info,quark_events=debug`.
    pub log: String,
    /// `text` or `json`.
    pub format: LogFormat,
    /// OTLP/gRPC endpoint of an OpenTelemetry collector, e.g. `http://127.0.0.1:4317`; empty: none.
    #[serde(default)]
    pub otlp_endpoint: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from(".quark"),
            bus: BusConfig::default(),
            broker: BrokerSettings {
                listen: "127.0.0.1:9092".into(),
                command: String::new(),
            },
            database: DatabaseSettings { url: String::new() },
            artifacts: ArtifactSettings {
                root: String::new(),
            },
            telemetry: TelemetrySettings {
                log: "info".into(),
                format: LogFormat::Text,
                otlp_endpoint: String::new(),
            },
            curate: CurateSettings {
                languages: vec!["eng".into()],
                min_words: 50,
                max_toxicity: 3.0,
                scrub_pii: true,
                validation_fraction: 0.05,
                tokenizer_vocab_size: 8192,
                minhash: Default::default(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

impl Settings {
    /// Loads defaults, then `file` (`quark.toml` in the working directory when `None`, if it
    /// exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, config::Environment::with_prefix("QUARK"))
    }

    fn load_from(file: Option<&Path>, env: config::Environment) -> Result<Settings, ConfigError> {
        let file_source = match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::MissingFile(path.to_path_buf()));
            }
            Some(path) => config::File::from(path).required(true),
            None => config::File::with_name("quark.toml").required(false),
        };
        let settings = config::Config::builder()
            .add_source(config::Config::try_from(&Settings::default())?)
            .add_source(file_source)
            .add_source(env.prefix_separator("__").separator("__").try_parsing(true))
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("quark.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }

    pub fn artifacts_root(&self) -> PathBuf {
        if self.artifacts.root.is_empty() {
            self.data_dir.join("artifacts")
        } else {
            PathBuf::from(&self.artifacts.root)
        }
    }

    pub fn uses_embedded_broker(&self) -> bool {
        self.bus.brokers.trim().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> config::Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        config::Environment::with_prefix("QUARK").source(Some(map))
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("quark.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/quark\"\n[bus]\nbrokers = \"file:9092\"\npartitions = 6\n\
             [curate]\nlanguages = [\"eng\", \"fra\"]\n[curate.minhash]\nthreshold = 0.7\n",
        )
        .unwrap();
        let settings = Settings::load_from(
            Some(&file),
            env(&[
                ("QUARK__BUS__BROKERS", "env-1:9092,env-2:9092"),
                ("QUARK__CURATE__MIN_WORDS", "20"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.curate.languages, ["eng", "fra"]);
        assert_eq!(settings.curate.minhash.threshold, 0.7);
        assert_eq!(
            settings.curate.minhash.bands, 16,
            "other MinHash keys keep their defaults"
        );
        assert_eq!(settings.curate.min_words, 20);
        assert_eq!(settings.data_dir, PathBuf::from("/srv/quark"));
        assert_eq!(settings.bus.partitions, 6);
        assert_eq!(settings.bus.brokers, "env-1:9092,env-2:9092");
        assert_eq!(settings.bus.replication, 1);
        assert_eq!(
            settings.database_url(),
            "sqlite:///srv/quark/quark.db?mode=rwc"
        );
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let error = Settings::load_from(None, env(&[("QUARK__BUS__PARTITIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("bus.partitions"), "{error}");
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("quark.toml");
        std::fs::write(&file, "[bus]\npartitons = 6\n").unwrap();
        let error = Settings::load_from(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("partitons"), "{error}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let error =
            Settings::load_from(Some(Path::new("/nonexistent/quark.toml")), env(&[])).unwrap_err();
        assert!(matches!(error, ConfigError::MissingFile(_)));
    }
}
