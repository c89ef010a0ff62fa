//! How the gateway batches generations: every request to one model runs in one continuous
//! batch, within these limits.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Generations decoded together; more wait their turn.
    pub max_requests: usize,
    /// Prompt and requested tokens of the running generations together (each capped by the
    /// model's context): what bounds the keys and values kept for them.
    pub max_tokens: usize,
    /// Prompt tokens read between two decode steps, so prompts arriving never stall the
    /// generations running (one prompt is always read).
    pub max_prefill_tokens: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_requests: 64,
            max_tokens: 16_384,
            max_prefill_tokens: 1_024,
        }
    }
}
