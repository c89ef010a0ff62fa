//! AdamW with weight-decay groups, gradient clipping and the warm-up + cosine schedule.
//!
//! Written over tensor ops rather than tch's C++ optimizer because that one cannot save or
//! restore its moments, and exact resume needs them. The update is PyTorch's single-tensor
//! AdamW (its default on CPU), op for op.

use crate::MlError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor, nn};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

struct Param {
    name: String,
    value: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Matrices and embeddings decay; biases and LayerNorm gains do not.
    decays: bool,
}

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    /// Updates taken so far (the bias-correction step).
    pub step: u64,
}

impl AdamW {
    /// Covers every trainable variable of `vs`, in name order so state files line up.
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> AdamW {
        let mut variables: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let params = variables
            .into_iter()
            .map(|(name, value)| Param {
                decays: value.dim() >= 2,
                exp_avg: value.zeros_like(),
                exp_avg_sq: value.zeros_like(),
                name,
                value,
            })
            .collect();
        AdamW {
            config,
            params,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.value.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm
    /// before clipping. Stays on the device (no host sync), as `clip_grad_norm_` does.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.value.grad().norm().to_kind(Kind::Float))
                .collect();
            let total = Tensor::stack(&norms, 0).norm();
            let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            for p in &self.params {
                let mut grad = p.value.grad();
                grad *= &coef;
            }
            total
        })
    }

    /// One AdamW update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let bias1 = 1.0 - beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.value.grad();
                if !grad.defined() {
                    continue;
                }
                if p.decays && weight_decay != 0.0 {
                    p.value *= 1.0 - lr * weight_decay;
                }
                let _ = p.exp_avg.lerp_(&grad, 1.0 - beta1);
                p.exp_avg_sq *= beta2;
                let _ = p.exp_avg_sq.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                let denom = (p.exp_avg_sq.sqrt() / bias2_sqrt) + eps;
                let _ = p.value.addcdiv_(&(&p.exp_avg * -step_size), &denom);
            }
        });
    }

    /// Saves the moments as safetensors (`exp_avg.<param>`, `exp_avg_sq.<param>`).
    pub fn save(&self, path: &Path) -> Result<(), MlError> {
        let mut named: Vec<(String, &Tensor)> = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            named.push((format!("exp_avg.{}", p.name), &p.exp_avg));
            named.push((format!("exp_avg_sq.{}", p.name), &p.exp_avg_sq));
        }
        Tensor::write_safetensors(&named, path)
            .map_err(|e| MlError::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// Restores moments saved by [`AdamW::save`] for the same parameters.
    pub fn load(&mut self, path: &Path, step: u64) -> Result<(), MlError> {
        let bad = |why: String| MlError::Checkpoint(format!("{}: {why}", path.display()));
        let mut saved: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect();
        tch::no_grad(|| {
            for p in &mut self.params {
                for (prefix, state) in [
                    ("exp_avg", &mut p.exp_avg),
                    ("exp_avg_sq", &mut p.exp_avg_sq),
                ] {
                    let key = format!("{prefix}.{}", p.name);
                    let value = saved.remove(&key).ok_or_else(|| bad(format!("no {key}")))?;
                    if value.size() != state.size() {
                        return Err(bad(format!(
                            "{key} has shape {:?}, the model needs {:?}",
                            value.size(),
                            state.size()
                        )));
                    }
                    state.copy_(&value);
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up to `max_lr`, then cosine decay to `min_lr` at `decay_steps`, flat after
/// (nanoGPT's schedule).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub max_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub decay_steps: u64,
}

impl Schedule {
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f64 / (self.warmup_steps + 1) as f64;
        }
        if step > self.decay_steps {
            return self.min_lr;
        }
        let progress = (step - self.warmup_steps) as f64
            / (self.decay_steps - self.warmup_steps).max(1) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let s = Schedule {
            max_lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            decay_steps: 2000,
        };
        assert!((s.lr(0) - 1e-3 / 101.0).abs() < 1e-12);
        assert!((s.lr(100) - 1e-3).abs() < 1e-12);
        assert!((s.lr(1050) - 5.5e-4).abs() < 1e-9, "{}", s.lr(1050));
        assert!((s.lr(2000) - 1e-4).abs() < 1e-12);
        assert_eq!(s.lr(5000), 1e-4);
        assert!((1..2000).all(|i| i < 100 || s.lr(i + 1) <= s.lr(i)));
    }

    /// The same update as `torch.optim.AdamW` on one tensor, computed by hand.
    #[test]
    fn adamw_matches_the_reference_update_and_clips() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2]));
        let b = vs.root().var_copy("b", &Tensor::from_slice(&[0.5f32]));
        let config = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(&vs, config);
        // loss = 3·sum(w) + 4·b: grads 3, 3 and 4, norm √34.
        let loss = (&w * 3.0).sum(Kind::Float) + (&b * 4.0).sum(Kind::Float);
        loss.backward();
        let norm = opt.clip_grad_norm(1.0).double_value(&[]);
        assert!((norm - 34f64.sqrt()).abs() < 1e-5);
        let g = 3.0 / 34f64.sqrt();
        assert!((w.grad().double_value(&[0, 0]) - g).abs() < 1e-6);
        opt.step(0.01);
        // Step 1: m = (1-β1)g, v = (1-β2)g², bias-corrected update = lr·g/|g| = lr (± eps).
        let expected_w0 = 1.0 * (1.0 - 0.01 * 0.1) - 0.01;
        assert!((w.double_value(&[0, 0]) - expected_w0).abs() < 1e-6);
        assert!(
            (b.double_value(&[0]) - (0.5 - 0.01)).abs() < 1e-6,
            "no decay on 1-D"
        );
        assert_eq!(opt.step, 1);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        opt.save(&path).unwrap();
        let mut restored = AdamW::new(&vs, config);
        restored.load(&path, 1).unwrap();
        assert!(restored.params[1].exp_avg.equal(&opt.params[1].exp_avg));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            restored.load(&path, 1),
            Err(MlError::Checkpoint(_))
        ));
    }
}
