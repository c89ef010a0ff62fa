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
    /// Prompt tokens read in one forward pass beside the running generations' next tokens,
    /// so prompts arriving never stall them (one prompt is always read).
    pub max_prefill_tokens: usize,
    /// libtorch intra-op threads of each batch (0: as many as the process has). A small
    /// model's step is hundreds of tiny operations: waking a second worker for each costs
    /// more than it saves, and its spinning takes the core the HTTP workers need.
    pub threads: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_requests: 64,
            max_tokens: 16_384,
            max_prefill_tokens: 1_024,
            threads: 1,
        }
    }
}
