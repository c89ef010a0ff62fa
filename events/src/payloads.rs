//! One struct per event type, field for field the records of `schemas/*.avsc`
//! (the `schema_drift` test fails when they differ). Field docs live in the `.avsc` files.

use crate::header::EventHeader;
use crate::ids::{Id, Timestamp};
use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A large object in the artifact store, referred to by location and content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
pub struct Artifact {
    pub uri: String,
    pub sha256: String,
    pub size_bytes: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    File,
    Directory,
    Git,
    Web,
    Feedback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    Pretrain,
    Sft,
    Preference,
    Eval,
    // Documents for retrieval: indexed, never trained on.
    Knowledge,
    // Prompts from served traffic, which a policy answers and a reward model judges (RLOO).
    Prompts,
    // Labelled requests (text, intent) the router's intent classifier learns.
    Intents,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    ByteLevelBpe,
    Character,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Pretrain,
    Sft,
    Reward,
    Dpo,
    // Policy optimisation against a reward model, with a KL penalty to the reference:
    // Quark's trainer runs it as RLOO (the symbol predates the choice).
    Ppo,
    Distill,
    Quantize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum GateRule {
    MaxRelativeIncrease,
    MaxRelativeDecrease,
    MinValue,
    MaxValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum RegressionSource {
    OfflineGate,
    LiveTelemetry,
    // The challenger's shadow answers to production prompts.
    ShadowTraffic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum Alias {
    Champion,
    Challenger,
    Previous,
    // An alias named by the promotion's `alias_name`.
    Named,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum PromotionReason {
    GatePassed,
    Rollback,
    Manual,
    // A newly trained model became the challenger.
    Trained,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(rename_all = "snake_case")]
pub enum RetrainTrigger {
    FeedbackThreshold,
    Regression,
    Schedule,
    Manual,
}

/// One metric compared by the promotion gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
pub struct GateCheck {
    pub metric: String,
    pub rule: GateRule,
    pub baseline: Option<f64>,
    pub candidate: f64,
    pub threshold: f64,
    pub passed: bool,
}

/// Architecture of a decoder-only transformer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
pub struct ModelShape {
    pub n_layer: i32,
    pub n_head: i32,
    pub n_embd: i32,
    pub block_size: i32,
    pub vocab_size: i32,
    pub parameters: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct DataCollected {
    pub header: EventHeader,
    pub collection_id: Id,
    pub source_kind: SourceKind,
    pub source_uri: String,
    pub shards: Vec<Artifact>,
    pub documents: i64,
    pub bytes: i64,
    pub skipped: i64,
    pub license: Option<String>,
    #[avro(default = "{}")]
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct DatasetPrepared {
    pub header: EventHeader,
    pub dataset_id: Id,
    pub name: String,
    pub kind: DatasetKind,
    pub train: Artifact,
    pub validation: Option<Artifact>,
    pub rejects: Option<Artifact>,
    pub train_examples: i64,
    pub validation_examples: i64,
    pub stats: HashMap<String, i64>,
    pub source_collections: Vec<Id>,
    pub parent_dataset_id: Option<Id>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct TokenizerTrained {
    pub header: EventHeader,
    pub tokenizer_id: Id,
    pub dataset_id: Id,
    pub kind: TokenizerKind,
    pub vocab_size: i32,
    pub special_tokens: Vec<String>,
    pub artifact: Artifact,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct ModelTrained {
    pub header: EventHeader,
    pub model_id: Id,
    pub run_kind: RunKind,
    pub parent_model_id: Option<Id>,
    pub dataset_ids: Vec<Id>,
    pub tokenizer_id: Id,
    pub shape: ModelShape,
    pub hyperparameters: HashMap<String, String>,
    pub checkpoint: Artifact,
    pub metrics: HashMap<String, f64>,
    pub device: String,
    pub steps: i64,
    pub tokens: i64,
    pub duration_ms: i64,
    #[avro(default = "null")]
    #[serde(default)]
    pub adapter: Option<Artifact>,
    #[avro(default = "null")]
    #[serde(default)]
    pub choice: Option<CheckpointChoice>,
}

/// Which checkpoint of a fine-tuning run was handed on, measured against the gate's limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
pub struct CheckpointChoice {
    pub step: i64,
    pub fits_gate: bool,
    pub checks: Vec<GateCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct EvalCompleted {
    pub header: EventHeader,
    pub evaluation_id: Id,
    pub model_id: Id,
    pub baseline_model_id: Option<Id>,
    pub metrics: HashMap<String, f64>,
    pub checks: Vec<GateCheck>,
    pub report: Artifact,
    pub source: Option<RegressionSource>,
}

impl EvalCompleted {
    /// Whether it is the promotion gate's verdict (a shadow-traffic report is not).
    pub fn is_gate(&self) -> bool {
        matches!(self.source, None | Some(RegressionSource::OfflineGate))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct EvalRegressed {
    pub header: EventHeader,
    pub evaluation_id: Id,
    pub model_id: Id,
    pub baseline_model_id: Option<Id>,
    pub source: RegressionSource,
    pub metrics: HashMap<String, f64>,
    pub regressions: Vec<GateCheck>,
    pub report: Option<Artifact>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct ModelPromoted {
    pub header: EventHeader,
    pub model_id: Id,
    pub alias: Alias,
    pub previous_model_id: Option<Id>,
    pub reason: PromotionReason,
    pub evaluation_id: Option<Id>,
    // What a consumer needs to use the model without asking anyone (null in promotions
    // written before they were carried).
    pub checkpoint: Option<Artifact>,
    pub tokenizer_id: Option<Id>,
    pub tokenizer: Option<Artifact>,
    pub run_kind: Option<RunKind>,
    pub parent_model_id: Option<Id>,
    pub dataset_ids: Option<Vec<Id>>,
    pub trained_at: Option<Timestamp>,
    pub alias_name: Option<String>,
    #[avro(default = "null")]
    #[serde(default)]
    pub operator: Option<String>,
    #[avro(default = "null")]
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct FeedbackReceived {
    pub header: EventHeader,
    pub feedback_id: Id,
    pub request_id: String,
    pub model_id: String,
    pub prompt: String,
    pub response: String,
    pub rating: i32,
    pub correction: Option<String>,
    pub preferred_response: Option<String>,
    #[avro(default = "[]")]
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct TelemetryReported {
    pub header: EventHeader,
    pub model_id: Id,
    pub instance: String,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub requests: i64,
    pub errors: i64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub tokens_generated: i64,
    pub feedback: i64,
    pub negative_feedback: i64,
    /// Requests the safety filter refused (prompt or answer blocked).
    #[avro(default = "0")]
    #[serde(default)]
    pub blocked: i64,
    /// Requests in which it found anything (blocked, redacted or flagged).
    #[avro(default = "0")]
    #[serde(default)]
    pub flagged: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct RetrainRequested {
    pub header: EventHeader,
    pub request_id: Id,
    pub run_kind: RunKind,
    pub base_model_id: Option<Id>,
    pub dataset_ids: Vec<Id>,
    pub trigger: RetrainTrigger,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct IndexUpdated {
    pub header: EventHeader,
    pub index_name: String,
    pub dataset_id: Id,
    pub table_uri: String,
    pub embedding_model: String,
    pub dimensions: i32,
    pub rows_added: i64,
    pub rows_total: i64,
    #[avro(default = "null")]
    #[serde(default)]
    pub table_version: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct ForgetRequested {
    pub header: EventHeader,
    pub document_id: String,
    #[avro(default = "null")]
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct DocumentForgotten {
    pub header: EventHeader,
    pub document_id: String,
    pub dataset_ids: Vec<Id>,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 7] = [
        DatasetKind::Pretrain,
        DatasetKind::Sft,
        DatasetKind::Preference,
        DatasetKind::Eval,
        DatasetKind::Knowledge,
        DatasetKind::Prompts,
        DatasetKind::Intents,
    ];

    /// The symbol the schema gives it (`pretrain`, `sft`, …).
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Pretrain => "pretrain",
            DatasetKind::Sft => "sft",
            DatasetKind::Preference => "preference",
            DatasetKind::Eval => "eval",
            DatasetKind::Knowledge => "knowledge",
            DatasetKind::Prompts => "prompts",
            DatasetKind::Intents => "intents",
        }
    }

    pub fn from_name(name: &str) -> Option<DatasetKind> {
        DatasetKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

impl RetrainRequested {
    /// A request addressed to the improvement policy rather than to a trainer: it names no
    /// dataset, and the augmenter answers it by releasing its pending examples and asking for
    /// a training on them.
    pub fn to_policy(producer: &str, trigger: RetrainTrigger, reason: &str) -> Self {
        RetrainRequested {
            header: EventHeader::root(producer),
            request_id: Id::random(),
            run_kind: RunKind::Sft,
            base_model_id: None,
            dataset_ids: vec![],
            trigger,
            reason: reason.to_string(),
        }
    }

    /// Whether it asks the policy (names no dataset) rather than a trainer. A quantize or
    /// distill run reads its base (and a distill run the pre-training data): it is for the
    /// trainer with no dataset.
    pub fn is_for_policy(&self) -> bool {
        self.dataset_ids.is_empty()
            && !matches!(self.run_kind, RunKind::Quantize | RunKind::Distill)
    }
}

impl RunKind {
    /// Whether its models answer prompts (a reward model only scores them).
    pub fn is_generative(self) -> bool {
        self != RunKind::Reward
    }
}

impl ModelPromoted {
    /// A move of `alias` to `model_id` for `reason`, carrying nothing yet (the registry's
    /// projection fills in the model: `quark_registry::carry_model`).
    pub fn moving(
        header: EventHeader,
        alias: Alias,
        model_id: Id,
        reason: PromotionReason,
    ) -> Self {
        ModelPromoted {
            header,
            model_id,
            alias,
            previous_model_id: None,
            reason,
            evaluation_id: None,
            checkpoint: None,
            tokenizer_id: None,
            tokenizer: None,
            run_kind: None,
            parent_model_id: None,
            dataset_ids: None,
            trained_at: None,
            alias_name: None,
            operator: None,
            note: None,
        }
    }

    /// The alias as it is known: `champion`, `challenger`, `previous`, or the name of a named
    /// alias.
    pub fn alias_key(&self) -> String {
        match (self.alias, &self.alias_name) {
            (Alias::Named, Some(name)) => name.clone(),
            (alias, _) => alias.label().to_string(),
        }
    }
}

impl Alias {
    pub fn label(self) -> &'static str {
        match self {
            Alias::Champion => "champion",
            Alias::Challenger => "challenger",
            Alias::Previous => "previous",
            Alias::Named => "named",
        }
    }
}

/// The prefix of a feedback label that names the prompt's intent (`intent:billing`).
pub const INTENT_LABEL: &str = "intent:";

impl FeedbackReceived {
    /// Ratings of 1 and 2 (of 5) are negative feedback.
    pub fn is_negative(&self) -> bool {
        self.rating <= 2
    }

    /// The intent a label `intent:<name>` gives the prompt (the last such label wins); none
    /// without one, or with an empty name.
    pub fn intent_label(&self) -> Option<&str> {
        self.labels
            .iter()
            .rev()
            .filter_map(|label| label.strip_prefix(INTENT_LABEL))
            .map(str::trim)
            .find(|name| !name.is_empty())
    }
}

/// One message of a chat request, as the model saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
pub struct ServedMessage {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct ResponseServed {
    pub header: EventHeader,
    pub request_id: String,
    pub model_id: Id,
    pub route: String,
    pub endpoint: String,
    pub prompt: String,
    pub messages: Vec<ServedMessage>,
    pub response: String,
    pub finish_reason: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: f64,
    pub streamed: bool,
    pub instance: String,
    pub routing: Option<Routing>,
    pub shadow_of: Option<String>,
}

/// How the router chose the model of a request that named `quark`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "quark.events")]
#[serde(deny_unknown_fields)]
pub struct Routing {
    pub intent: Option<String>,
    pub intent_probability: Option<f64>,
    pub rule: String,
    pub alias: String,
    pub canary: bool,
    pub fell_back_from: Option<String>,
    pub shadow: Option<String>,
}
