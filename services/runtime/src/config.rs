//! Settings, layered: built-in defaults < `quark.toml` < `QUARK__SECTION__KEY` environment
//! variables (e.g. `QUARK__BUS__BROKERS=kafka-1:9092`). Unknown keys and bad values are
//! errors that name the key.

use crate::artifacts::{ArtifactError, ArtifactStore};
use quark_events::bus::BusConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod batch;
mod distill;
mod evaluate;
mod moderation;
mod retrieval;
mod router;
pub use batch::BatchSettings;
pub use distill::DistillSettings;
pub use evaluate::EvaluateSettings;
pub use moderation::ModerationSettings;
pub use retrieval::{RetrievalSettings, StorageOptions};
pub use router::{RouteRule, RouterSettings, ShadowAlias};

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
    pub trainer: TrainerSettings,
    pub evaluate: EvaluateSettings,
    pub registry: RegistrySettings,
    pub gateway: GatewaySettings,
    pub augment: AugmentSettings,
    #[serde(default)]
    pub schema_registry: SchemaRegistrySettings,
    #[serde(default)]
    pub retrieval: RetrievalSettings,
    #[serde(default)]
    pub dashboard: DashboardSettings,
}

/// The operators' dashboard (`quark up` serves it; `quark dashboard` against any cluster).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardSettings {
    /// Where it listens; keep it on loopback (reading is open, actions need an API key).
    pub listen: String,
    /// How often the page gets a new state.
    pub refresh_ms: u64,
    /// How many of each topic's latest messages the message browser holds.
    #[serde(default = "DashboardSettings::default_keep")]
    pub keep_messages: usize,
}

impl DashboardSettings {
    fn default_keep() -> usize {
        5_000
    }
}

impl Default for DashboardSettings {
    fn default() -> Self {
        DashboardSettings {
            listen: "127.0.0.1:8090".into(),
            refresh_ms: 1_000,
            keep_messages: DashboardSettings::default_keep(),
        }
    }
}

/// The Confluent-compatible schema registry every event schema is registered in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistrySettings {
    /// An external registry (Confluent Schema Registry, Karapace), e.g.
    /// `http://schema-registry:8081`; empty: `quark up` serves the embedded one on the database.
    #[serde(default)]
    pub url: String,
    /// Where `quark up` serves the embedded registry (port 0: any free port).
    pub listen: String,
}

impl Default for SchemaRegistrySettings {
    fn default() -> Self {
        SchemaRegistrySettings {
            url: String::new(),
            listen: "127.0.0.1:8081".into(),
        }
    }
}

/// What the trainer trains. A shape field of 0 is sized for the device: a CPU gets a model
/// that trains in minutes, a GPU one that uses it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerSettings {
    /// auto (CUDA when present), cpu, cuda or cuda:<n>.
    pub device: String,
    pub n_layer: i64,
    pub n_head: i64,
    pub n_embd: i64,
    pub block_size: i64,
    /// Biases in the projections and LayerNorms (GPT-2's layout); false trains without them,
    /// as nanoGPT does (exported as GPT-2 with zero biases).
    pub bias: bool,
    /// The MLP's activation: `gelu_new` (GPT-2's tanh approximation) or `gelu` (nanoGPT's).
    pub activation: String,
    /// Rows of `block_size` tokens per optimizer step (0: as many as make 2,048 tokens on a
    /// CPU, 4,096 on CUDA).
    pub batch_size: usize,
    /// Optimizer steps of a pre-training run (0: sized for the device).
    pub pretrain_steps: u64,
    /// Optimizer steps of a fine-tuning run on feedback.
    pub finetune_steps: u64,
    pub lr: f64,
    pub finetune_lr: f64,
    pub warmup_steps: u64,
    /// Steps between checkpoints: a killed job resumes from the last one.
    pub checkpoint_interval: u64,
    /// The share of each fine-tuning batch that is fresh windows of pre-training text (the
    /// rest is feedback examples): without them a small model forgets what it knew while it
    /// learns the corrections.
    pub rehearsal_share: f64,
    pub seed: u64,
    /// LoRA adapters trained on feedback, the base frozen (rank 0: every weight is trained).
    pub lora: LoraSettings,
    /// Weight of the pull toward the champion on the rehearsal text: KL(champion ‖ candidate)
    /// of the next-token distributions, added to the loss (0: none).
    pub kl_weight: f64,
    /// Steps between the trainer's readings of the gate's held-out metrics and of the loss
    /// on the corrections during a fine-tuning run.
    pub probe_interval: u64,
    /// Share of each of the gate's held-out limits the chosen checkpoint must leave free
    /// (the evaluator measures on its own device and precision).
    pub gate_margin: f64,
    /// Share of the corrections reproduced exactly at greedy decoding, inside the limits, at
    /// which a fine-tuning run stops early.
    pub stop_when_learnt: f64,
    /// DPO and reward-model runs on preference pairs.
    pub align: AlignSettings,
    /// Policy optimisation (ppo runs, by RLOO) on prompts from served traffic.
    pub rloo: RlooSettings,
    /// Distillation of the champion into a smaller student (distill runs).
    #[serde(default)]
    pub distill: DistillSettings,
}

/// RLOO of the champion against the newest reward model trained from it (LoRA adapters when
/// `trainer.lora.rank` is above 0, their base the reference; else a frozen copy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlooSettings {
    /// Optimizer steps.
    pub steps: u64,
    /// Peak learning rate (warm-up over a tenth of the steps, then cosine to a tenth).
    pub lr: f64,
    /// Prompts per optimizer step.
    pub prompts_per_step: usize,
    /// Completions sampled per prompt: each one's baseline is the others' mean score.
    pub samples: usize,
    /// Weight of the KL penalty to the reference (TRL's `beta`).
    pub beta: f64,
    pub temperature: f64,
    pub max_new_tokens: usize,
}

/// Learning from preference pairs (every weight is trained; DPO against the base).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignSettings {
    /// Optimizer steps of a DPO or reward-model run.
    pub steps: u64,
    /// Peak learning rate (warm-up over a tenth of the steps, then cosine to a tenth).
    pub lr: f64,
    /// Pairs per optimizer step (each is two rows).
    pub pairs_per_step: usize,
    /// DPO's β: how far the policy may move from the champion it starts from.
    pub beta: f64,
    /// DPO's loss: `sigmoid` (DPO) or `ipo`.
    pub loss: String,
    /// The reward model's `center_rewards_coefficient` (TRL's; 0: no centring).
    pub center_rewards_coefficient: f64,
}

/// LoRA on feedback: which projections and how strong (Hugging Face PEFT's terms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    pub rank: i64,
    pub alpha: f64,
    /// PEFT module names: c_attn, c_proj (attention's and the MLP's output), c_fc.
    pub targets: Vec<String>,
}

/// When the registry rolls the champion back on live telemetry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Requests a telemetry window needs before its error rate is trusted.
    pub min_requests: i64,
    /// Share of failed requests above which the champion is rolled back.
    pub max_error_rate: f64,
    /// Feedback a window needs before its negative share is trusted.
    pub min_feedback: i64,
    /// Share of negative feedback above which the champion is rolled back.
    pub max_negative_rate: f64,
    /// When a forgotten document was in the champion's lineage: ask for a full retrain on
    /// its pre-training data without the document (the gate then decides), or only flag it.
    pub retrain_forgotten_champion: bool,
}

/// The OpenAI-compatible HTTP gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub listen: String,
    /// Keys accepted (as `Authorization: Bearer <key>`) on /v1/feedback and /v1/admin/*.
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    /// Upper bound of a request's max_tokens.
    pub max_tokens: usize,
    /// Milliseconds per telemetry.reported window.
    pub telemetry_window_ms: u64,
    /// Names this gateway in telemetry and its consumer group (each gateway sees every promotion).
    pub instance: String,
    #[serde(default)]
    pub moderation: ModerationSettings,
    /// The continuous batch every generation runs in.
    #[serde(default)]
    pub batch: BatchSettings,
    /// Where served models run: `auto` (CUDA when present), `cpu`, `cuda` or `cuda:<n>`.
    #[serde(default = "auto")]
    pub device: String,
    /// Weights of the models loaded at once (every alias is served; the least recently used
    /// is unloaded to make room, the champion never), in MiB.
    #[serde(default = "models_memory_mb")]
    pub models_memory_mb: u64,
    /// Generations this gateway takes on at once (running, waiting for the batch or
    /// streaming; a request with n choices counts n). More get 429 with `Retry-After` until
    /// one ends: a burst is turned back at once instead of queueing without bound.
    pub max_in_flight: usize,
    #[serde(default)]
    pub router: RouterSettings,
}

fn models_memory_mb() -> u64 {
    4_096
}

fn auto() -> String {
    "auto".into()
}

/// When feedback becomes a retraining.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSettings {
    /// New corrections that trigger a retraining.
    pub min_examples: usize,
    /// Seconds between scheduled releases of whatever examples are pending (0: never).
    pub release_interval_secs: u64,
    /// Preference pairs released also train a reward model from the champion, before the
    /// DPO run, and the gate reads the DPO policy's answers by it.
    pub reward_model: bool,
    /// With the reward model, the preference pairs' prompts and the most recent other
    /// distinct prompts of served traffic (up to this many in all) are released as a prompts dataset and the champion is optimised on them
    /// against the reward model (a ppo run, by RLOO); 0: no such run.
    pub rloo_prompts: usize,
    /// A training released by the threshold holds back the next (its examples wait and go
    /// together) until its model.trained arrives or this many seconds pass.
    pub training_timeout_secs: u64,
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
    /// Milliseconds between health checks (a metadata request over the Kafka protocol).
    #[serde(default = "BrokerSettings::default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Failed checks in a row after which the broker is killed and restarted.
    #[serde(default = "BrokerSettings::default_health_failures")]
    pub health_failures: u32,
    /// Partitions of the topics `quark up` creates on it (instead of `bus.partitions`). One
    /// process runs one consumer per service, and every idle partition costs a little on
    /// every fetch; more let `quark run` instances share a service's work.
    #[serde(default = "BrokerSettings::default_partitions")]
    pub partitions: i32,
}

impl BrokerSettings {
    fn default_health_interval_ms() -> u64 {
        2000
    }
    fn default_health_failures() -> u32 {
        3
    }
    fn default_partitions() -> i32 {
        1
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`; empty: SQLite in the data directory.
    #[serde(default)]
    pub url: String,
}

/// Where artifacts live: a local directory (default) or S3-compatible object storage
/// (`url = "s3://bucket/prefix"`). Empty S3 fields defer to the standard `AWS_*` environment
/// variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, …).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSettings {
    /// Root directory of the local content-addressed store when `url` is empty; empty:
    /// `<data_dir>/artifacts`.
    #[serde(default)]
    pub root: String,
    /// `s3://bucket/prefix` for object storage, `file:///path` for a directory; empty: `root`.
    #[serde(default)]
    pub url: String,
    /// Endpoint of an S3-compatible server (MinIO: `http://minio:9000`); empty: AWS.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// Allow a plain-HTTP endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Verified local copies of objects, for the libraries that read files; empty:
    /// `<data_dir>/artifact-cache`.
    #[serde(default)]
    pub cache_dir: String,
}

/// Debug without the secret.
impl std::fmt::Debug for ArtifactSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.secret_access_key.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("ArtifactSettings")
            .field("root", &self.root)
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret)
            .field("allow_http", &self.allow_http)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
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
    /// Where this process serves `/metrics` for Prometheus, e.g. `0.0.0.0:9464`; empty: only
    /// on the gateway's port (which `quark up` serves every service's metrics on).
    #[serde(default)]
    pub metrics_listen: String,
    /// How often consumer-group lag is read for `/metrics`.
    #[serde(default = "TelemetrySettings::default_lag_interval_ms")]
    pub lag_interval_ms: u64,
}

impl TelemetrySettings {
    fn default_lag_interval_ms() -> u64 {
        5_000
    }
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
                health_interval_ms: BrokerSettings::default_health_interval_ms(),
                health_failures: BrokerSettings::default_health_failures(),
                partitions: BrokerSettings::default_partitions(),
            },
            database: DatabaseSettings { url: String::new() },
            artifacts: ArtifactSettings::default(),
            telemetry: TelemetrySettings {
                log: "info".into(),
                format: LogFormat::Text,
                otlp_endpoint: String::new(),
                metrics_listen: String::new(),
                lag_interval_ms: TelemetrySettings::default_lag_interval_ms(),
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
            trainer: TrainerSettings {
                device: "auto".into(),
                n_layer: 0,
                n_head: 0,
                n_embd: 0,
                block_size: 0,
                bias: true,
                activation: "gelu_new".into(),
                batch_size: 0,
                pretrain_steps: 0,
                finetune_steps: 300,
                lr: 1e-3,
                finetune_lr: 3e-3,
                warmup_steps: 20,
                checkpoint_interval: 50,
                rehearsal_share: 0.875,
                seed: 1337,
                lora: LoraSettings {
                    rank: 8,
                    alpha: 16.0,
                    targets: ["c_attn", "c_proj", "c_fc", "wte"]
                        .map(String::from)
                        .to_vec(),
                },
                kl_weight: 3.0,
                probe_interval: 5,
                gate_margin: 0.25,
                stop_when_learnt: 1.0,
                align: AlignSettings {
                    steps: 40,
                    lr: 5e-5,
                    pairs_per_step: 8,
                    beta: 0.1,
                    loss: "sigmoid".into(),
                    center_rewards_coefficient: 0.01,
                },
                rloo: RlooSettings {
                    steps: 20,
                    lr: 1e-4,
                    prompts_per_step: 2,
                    samples: 4,
                    beta: 0.05,
                    temperature: 1.0,
                    max_new_tokens: 24,
                },
                distill: DistillSettings::default(),
            },
            evaluate: EvaluateSettings::default(),
            registry: RegistrySettings {
                min_requests: 50,
                max_error_rate: 0.2,
                min_feedback: 10,
                max_negative_rate: 0.6,
                retrain_forgotten_champion: true,
            },
            gateway: GatewaySettings {
                listen: "127.0.0.1:8080".into(),
                api_keys: vec!["quark-local-key".into()],
                max_body_bytes: 1 << 20,
                max_tokens: 512,
                telemetry_window_ms: 10_000,
                instance: "gateway".into(),
                moderation: ModerationSettings::default(),
                batch: BatchSettings::default(),
                device: auto(),
                models_memory_mb: models_memory_mb(),
                max_in_flight: 256,
                router: RouterSettings::default(),
            },
            augment: AugmentSettings {
                min_examples: 8,
                release_interval_secs: 86_400,
                reward_model: true,
                rloo_prompts: 0,
                training_timeout_secs: 3600,
            },
            schema_registry: SchemaRegistrySettings::default(),
            retrieval: RetrievalSettings::default(),
            dashboard: DashboardSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Inconsistent(String),
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
            .try_deserialize::<Settings>()?;
        settings
            .gateway
            .router
            .check()
            .map_err(ConfigError::Inconsistent)?;
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

    /// The artifact store these settings name (see [`ArtifactSettings`]).
    pub fn artifact_store(&self) -> Result<ArtifactStore, ArtifactError> {
        ArtifactStore::from_settings(&self.artifacts, &self.data_dir)
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
mod tests;
