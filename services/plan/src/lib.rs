//! Planning a training run before spending compute on it: how big a GPT-style model is, what
//! training it on D tokens costs in FLOPs, memory and time on a given device, what size a FLOP
//! budget buys (Chinchilla), and which tasks the seed targets with the metrics that judge them.

mod catalogue;
mod estimate;

pub use catalogue::{TASKS, Task};
pub use estimate::{DEVICES, Device, MemoryEstimate, Precision, Shape, compute_optimal, device};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("n_embd ({n_embd}) must be a positive multiple of n_head ({n_head})")]
    HeadsDoNotDivide { n_embd: u64, n_head: u64 },
    #[error("{0} must be positive")]
    NotPositive(&'static str),
    #[error("unknown device {0:?}; known: {1}")]
    UnknownDevice(String, String),
}
