//! Sizes and costs of a decoder-only transformer with the GPT-2 layout: learned positions,
//! pre-LayerNorm blocks (attention with biases, 4× GELU MLP), final LayerNorm, output layer tied
//! to the token embedding.

use crate::PlanError;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Shape {
    pub n_layer: u64,
    pub n_head: u64,
    pub n_embd: u64,
    pub block_size: u64,
    pub vocab_size: u64,
}

impl Shape {
    pub fn validate(&self) -> Result<(), PlanError> {
        for (name, v) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err(PlanError::NotPositive(name));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(PlanError::HeadsDoNotDivide {
                n_embd: self.n_embd,
                n_head: self.n_head,
            });
        }
        Ok(())
    }

    /// Trainable parameters, the tied output layer counted once.
    pub fn parameters(&self) -> u64 {
        let d = self.n_embd;
        // Per block: two LayerNorms (4d), QKV (3d² + 3d), attention output (d² + d),
        // MLP up (4d² + 4d) and down (4d² + d).
        let block = 12 * d * d + 13 * d;
        self.vocab_size * d + self.block_size * d + self.n_layer * block + 2 * d
    }

    /// Parameters that cost compute per token: all but the position table (a lookup).
    pub fn compute_parameters(&self) -> u64 {
        self.parameters() - self.block_size * self.n_embd
    }

    /// Training FLOPs per token: 6N for the matrix products forward and backward, plus
    /// 12·L·T·d for attention scores and their weighted sum at full context (as in the PaLM
    /// paper's and nanoGPT's MFU accounting).
    pub fn training_flops_per_token(&self) -> f64 {
        6.0 * self.compute_parameters() as f64
            + 12.0 * (self.n_layer * self.block_size * self.n_embd) as f64
    }

    /// Training FLOPs for `tokens` tokens.
    pub fn training_flops(&self, tokens: f64) -> f64 {
        self.training_flops_per_token() * tokens
    }

    /// Memory of training with AdamW at `micro_batch` sequences of `block_size` tokens,
    /// activations kept for the backward pass (no recomputation).
    pub fn training_memory(&self, precision: Precision, micro_batch: u64) -> MemoryEstimate {
        let n = self.parameters() as f64;
        let (s, b, h, a, l, v) = (
            self.block_size as f64,
            micro_batch as f64,
            self.n_embd as f64,
            self.n_head as f64,
            self.n_layer as f64,
            self.vocab_size as f64,
        );
        let (weights, gradients, optimizer, activation_bytes) = match precision {
            Precision::Fp32 => (4.0 * n, 4.0 * n, 8.0 * n, 2.0),
            // bf16 autocast keeps fp32 master weights and gradients; activations are 16-bit.
            Precision::Bf16Mixed => (4.0 * n, 4.0 * n, 8.0 * n, 1.0),
        };
        // Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) bytes per layer with 16-bit activations;
        // fp32 doubles it. Plus the logits and their gradient in fp32.
        let per_layer = s * b * h * (34.0 + 5.0 * a * s / h) * activation_bytes;
        let logits = 2.0 * 4.0 * s * b * v;
        MemoryEstimate {
            weights,
            gradients,
            optimizer,
            activations: l * per_layer + logits,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Precision {
    Fp32,
    Bf16Mixed,
}

/// Bytes of training state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MemoryEstimate {
    pub weights: f64,
    pub gradients: f64,
    /// AdamW's two moments, fp32.
    pub optimizer: f64,
    pub activations: f64,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.weights + self.gradients + self.optimizer + self.activations
    }
}

/// An accelerator (or CPU) with its peak dense throughput.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Device {
    pub name: &'static str,
    pub description: &'static str,
    /// Peak dense bf16 (fp32 for CPUs) FLOP/s.
    pub peak_flops: f64,
}

/// Vendor peak dense figures (no sparsity).
pub const DEVICES: &[Device] = &[
    Device {
        name: "h100",
        description: "NVIDIA H100 SXM, bf16 dense",
        peak_flops: 989e12,
    },
    Device {
        name: "h200",
        description: "NVIDIA H200 SXM, bf16 dense",
        peak_flops: 989e12,
    },
    Device {
        name: "a100",
        description: "NVIDIA A100, bf16 dense",
        peak_flops: 312e12,
    },
    Device {
        name: "l4",
        description: "NVIDIA L4, bf16 dense",
        peak_flops: 121e12,
    },
    Device {
        name: "cpu",
        description: "2-core x86-64 with AVX-512 FMA, fp32 (2 cores × 64 FLOP/cycle × 3 GHz)",
        peak_flops: 384e9,
    },
];

pub fn device(name: &str) -> Result<Device, PlanError> {
    DEVICES
        .iter()
        .copied()
        .find(|d| d.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            PlanError::UnknownDevice(
                name.to_string(),
                DEVICES
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

impl Device {
    /// Seconds to execute `flops` at `mfu` (model FLOPs utilisation, 0–1).
    pub fn seconds(&self, flops: f64, mfu: f64) -> f64 {
        flops / (self.peak_flops * mfu)
    }
}

/// The compute-optimal model size and token count for a FLOP budget `c`, with Chinchilla's
/// rule of about 20 tokens per parameter: C = 6·N·D and D = 20·N give N = √(C/120).
pub fn compute_optimal(c: f64) -> (f64, f64) {
    let n = (c / 120.0).sqrt();
    (n, 20.0 * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPT2_SMALL: Shape = Shape {
        n_layer: 12,
        n_head: 12,
        n_embd: 768,
        block_size: 1024,
        vocab_size: 50257,
    };

    #[test]
    fn gpt2_small_has_the_published_parameter_count() {
        // Hugging Face's GPT2LMHeadModel: 124,439,808 parameters (lm_head tied to wte).
        assert_eq!(GPT2_SMALL.parameters(), 124_439_808);
        // nanoGPT's "number of parameters" (position table excluded): 123.65M.
        assert_eq!(GPT2_SMALL.compute_parameters(), 123_653_376);
    }

    #[test]
    fn flops_per_token_add_attention_to_6n() {
        let expected = 6.0 * 123_653_376.0 + 12.0 * 12.0 * 1024.0 * 768.0;
        assert_eq!(GPT2_SMALL.training_flops_per_token(), expected);
        assert_eq!(GPT2_SMALL.training_flops(1e9), expected * 1e9);
    }

    #[test]
    fn chinchilla_budget_gives_70b_parameters_on_1_4t_tokens() {
        let (n, d) = compute_optimal(6.0 * 70e9 * 1.4e12);
        assert!((n / 70e9 - 1.0).abs() < 1e-9, "{n}");
        assert!((d / 1.4e12 - 1.0).abs() < 1e-9, "{d}");
    }

    #[test]
    fn memory_counts_adamw_state_and_activations() {
        let m = GPT2_SMALL.training_memory(Precision::Bf16Mixed, 8);
        let n = 124_439_808.0;
        assert_eq!(m.weights, 4.0 * n);
        assert_eq!(m.optimizer, 8.0 * n);
        // 12 layers × 1024·8·768·(34 + 5·12·1024/768) bytes + logits 2·4·1024·8·50257.
        let activations =
            12.0 * 1024.0 * 8.0 * 768.0 * (34.0 + 80.0) + 8.0 * 1024.0 * 8.0 * 50257.0;
        assert_eq!(m.activations, activations);
        assert!(m.total() > 2e9 && m.total() < 20e9, "{}", m.total());
    }

    #[test]
    fn time_on_a_device_at_an_assumed_mfu() {
        let h100 = device("H100").unwrap();
        assert_eq!(h100.seconds(989e12 * 0.4 * 3600.0, 0.4), 3600.0);
        assert!(matches!(device("tpu"), Err(PlanError::UnknownDevice(..))));
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let bad = Shape {
            n_head: 5,
            ..GPT2_SMALL
        };
        assert_eq!(
            bad.validate(),
            Err(PlanError::HeadsDoNotDivide {
                n_embd: 768,
                n_head: 5
            })
        );
        assert_eq!(
            Shape {
                n_layer: 0,
                ..GPT2_SMALL
            }
            .validate(),
            Err(PlanError::NotPositive("n_layer"))
        );
    }
}
