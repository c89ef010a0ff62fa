//! distill runs: a student with a fraction of the champion's layers learns the champion's
//! next-token distribution on its pre-training data (`quark_ml::distill`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillSettings {
    /// Optimizer steps (0: as many as a pre-training).
    pub steps: u64,
    /// The student's layers as a share of the teacher's (at least one).
    pub layer_share: f64,
    /// Weight of the KL term; the rest is the next-token loss on the text.
    pub kl_share: f64,
    /// Softening of both distributions in the KL term.
    pub temperature: f64,
}

impl Default for DistillSettings {
    fn default() -> Self {
        DistillSettings {
            steps: 0,
            layer_share: 0.5,
            kl_share: 0.9,
            temperature: 2.0,
        }
    }
}

impl DistillSettings {
    /// The student's depth for a teacher `teacher_layers` deep.
    pub fn student_layers(&self, teacher_layers: i64) -> i64 {
        ((teacher_layers as f64 * self.layer_share).round() as i64).clamp(1, teacher_layers)
    }
}
