//! AdamW with weight-decay groups, gradient clipping and the warm-up + cosine schedule.
//!
//! Written over tensor ops rather than tch's C++ optimizer because that one cannot save or
//! restore its moments, and exact resume needs them. The update is PyTorch's single-tensor
//! AdamW (its default on CPU), op for op, but applied to whole buffers: the parameters of one
//! dtype and decay rule are laid end to end in one flat buffer, and each parameter, its
//! gradient and its two moments are views into that group's buffers. A step is then a handful
//! of ops per group instead of a handful per parameter (tch has no `_foreach_*` or fused AdamW
//! to do it for us). Element for element the arithmetic is the per-parameter update's, and
//! the clipping norm is summed in the same order, so training is bit for bit what it was.

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

/// Variables with their names.
type Named = Vec<(String, Tensor)>;

/// The variables of `vs` that train, in name order.
fn trainable_by_name(vs: &nn::VarStore) -> Named {
    let mut variables: Named = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

/// One parameter's place in its group's buffers.
struct Slot {
    name: String,
    /// The variable itself (its data is a view into the group's values).
    variable: Tensor,
    offset: i64,
    shape: Vec<i64>,
}

impl Slot {
    fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// This parameter's part of one of its group's flat buffers, in its own shape.
    fn of(&self, flat: &Tensor) -> Tensor {
        flat.narrow(0, self.offset, self.numel())
            .view(self.shape.as_slice())
    }
}

/// Parameters of one dtype that decay alike, end to end.
struct Group {
    /// Matrices and embeddings decay; biases and LayerNorm gains do not.
    decays: bool,
    slots: Vec<Slot>,
    values: Tensor,
    grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Every gradient is a view into `grads`.
    gathered: bool,
}

impl Group {
    /// Moves `variables` into one flat buffer; each variable's data becomes a view into it.
    fn new(decays: bool, variables: Named) -> Group {
        let mut offset = 0;
        let slots: Vec<Slot> = variables
            .into_iter()
            .map(|(name, variable)| {
                let slot = Slot {
                    name,
                    offset,
                    shape: variable.size(),
                    variable,
                };
                offset += slot.numel();
                slot
            })
            .collect();
        let first = &slots[0].variable;
        let values = Tensor::empty([offset], (first.kind(), first.device()));
        tch::no_grad(|| {
            for slot in &slots {
                let mut view = slot.of(&values);
                view.copy_(&slot.variable);
                slot.variable.shallow_clone().set_data(&view);
            }
        });
        Group {
            decays,
            slots,
            grads: values.zeros_like(),
            exp_avg: values.zeros_like(),
            exp_avg_sq: values.zeros_like(),
            values,
            gathered: false,
        }
    }

    /// Makes every gradient autograd allocated a view into `grads` (copying it there once);
    /// backward then accumulates into the views in place, and zeroing keeps them, so once
    /// every parameter's is a view there is nothing more to do. A parameter with no gradient
    /// yet (not reached by the loss) reads as zero.
    fn gather_grads(&mut self) {
        if self.gathered {
            return;
        }
        self.gathered = tch::no_grad(|| {
            let mut all = true;
            for slot in &self.slots {
                let mut grad = slot.variable.grad();
                let mut view = slot.of(&self.grads);
                if !grad.defined() {
                    all = false;
                } else if grad.data_ptr() != view.data_ptr() {
                    view.copy_(&grad);
                    grad.set_data(&view);
                }
            }
            all
        })
    }
}

/// One step's AdamW arithmetic (PyTorch's single-tensor update), the same for a whole
/// parameter or for a round of a flat buffer.
struct Update {
    config: AdamWConfig,
    /// The weight-decay factor, for tensors that decay.
    decay: Option<f64>,
    step_size: f64,
    bias2_sqrt: f64,
}

impl Update {
    fn new(config: &AdamWConfig, step: u64, lr: f64, decays: bool) -> Update {
        Update {
            config: *config,
            decay: (decays && config.weight_decay != 0.0).then_some(1.0 - lr * config.weight_decay),
            step_size: lr / (1.0 - config.beta1.powi(step as i32)),
            bias2_sqrt: (1.0 - config.beta2.powi(step as i32)).sqrt(),
        }
    }

    fn apply(
        &self,
        values: &mut Tensor,
        grads: &Tensor,
        exp_avg: &mut Tensor,
        exp_avg_sq: &mut Tensor,
    ) {
        let AdamWConfig {
            beta1, beta2, eps, ..
        } = self.config;
        if let Some(decay) = self.decay {
            *values *= decay;
        }
        let _ = exp_avg.lerp_(grads, 1.0 - beta1);
        *exp_avg_sq *= beta2;
        let _ = exp_avg_sq.addcmul_(&(grads * (1.0 - beta2)), grads);
        let denom = (exp_avg_sq.sqrt() / self.bias2_sqrt) + eps;
        let _ = values.addcdiv_(&(&*exp_avg * -self.step_size), &denom);
    }
}

/// How many elements of a group one round of the update's ops covers. On the CPU a whole
/// group's buffers and temporaries outgrow the caches, so each op would stream them through
/// memory; a round per parameter costs a dispatch per op for each small bias. Rounds of 2^17
/// elements (512 KiB a buffer) were the fastest of 2^13 to 2^20 on a 2-core Xeon
/// (`quark-bench-optim`). On an accelerator one round covers it all.
fn chunk_len(device: tch::Device) -> i64 {
    match device {
        tch::Device::Cpu => 1 << 17,
        _ => i64::MAX,
    }
}

pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<Group>,
    /// Every parameter's gradient (a view into its group's), in name order.
    grads_by_name: Vec<Tensor>,
    /// Updates taken so far (the bias-correction step).
    pub step: u64,
}

impl AdamW {
    /// Covers every trainable variable of `vs` (grouped by dtype and decay, in name order),
    /// moving each into its group's flat buffer.
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> AdamW {
        let mut grouped: Vec<((Kind, bool), Named)> = Vec::new();
        for (name, variable) in trainable_by_name(vs) {
            let key = (variable.kind(), variable.dim() >= 2);
            match grouped.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push((name, variable)),
                None => grouped.push((key, vec![(name, variable)])),
            }
        }
        let groups: Vec<Group> = grouped
            .into_iter()
            .map(|((_, decays), members)| Group::new(decays, members))
            .collect();
        let mut grads_by_name: Vec<(&str, Tensor)> = groups
            .iter()
            .flat_map(|g| g.slots.iter().map(|s| (s.name.as_str(), s.of(&g.grads))))
            .collect();
        grads_by_name.sort_by(|a, b| a.0.cmp(b.0));
        let grads_by_name = grads_by_name.into_iter().map(|(_, grad)| grad).collect();
        AdamW {
            config,
            groups,
            grads_by_name,
            step: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for group in &mut self.groups {
            group.gather_grads();
            let _ = group.grads.zero_();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm
    /// before clipping. Stays on the device (no host sync), as `clip_grad_norm_` does. The
    /// norm is taken per parameter in name order, as the per-parameter update took it, so that
    /// training is bit for bit what it was before the flat buffers.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        for group in &mut self.groups {
            group.gather_grads();
        }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .grads_by_name
                .iter()
                .map(|grad| grad.norm().to_kind(Kind::Float))
                .collect();
            let total = Tensor::stack(&norms, 0).norm();
            let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            for group in &mut self.groups {
                group.grads *= &coef;
            }
            total
        })
    }

    /// One AdamW update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        tch::no_grad(|| {
            for g in &mut self.groups {
                g.gather_grads();
                let update = Update::new(&self.config, self.step, lr, g.decays);
                let total = g.values.numel() as i64;
                let chunk = chunk_len(g.values.device());
                for start in (0..total).step_by(chunk as usize) {
                    let len = chunk.min(total - start);
                    let [mut values, grads, mut exp_avg, mut exp_avg_sq] =
                        [&g.values, &g.grads, &g.exp_avg, &g.exp_avg_sq]
                            .map(|t| t.narrow(0, start, len));
                    update.apply(&mut values, &grads, &mut exp_avg, &mut exp_avg_sq);
                }
            }
        });
    }

    /// Each moment as the state file names it, as a view into its group's buffer.
    fn moments(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::new();
        for g in &self.groups {
            for slot in &g.slots {
                named.push((format!("exp_avg.{}", slot.name), slot.of(&g.exp_avg)));
                named.push((format!("exp_avg_sq.{}", slot.name), slot.of(&g.exp_avg_sq)));
            }
        }
        named
    }

    /// Saves the moments as safetensors (`exp_avg.<param>`, `exp_avg_sq.<param>`).
    pub fn save(&self, path: &Path) -> Result<(), MlError> {
        Tensor::write_safetensors(&self.moments(), path)
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
            for (key, mut state) in self.moments() {
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
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// The per-parameter AdamW that [`AdamW`] replaced, op for op (PyTorch's single-tensor
/// update): what the flat buffers must equal (tested), and the peer in the optimizer's
/// benchmark (`quark-bench-optim`). Not for training: it cannot save its moments.
pub struct PerParameterAdamW {
    /// (value, exp_avg, exp_avg_sq, decays)
    params: Vec<(Tensor, Tensor, Tensor, bool)>,
    step: u64,
    config: AdamWConfig,
}

impl PerParameterAdamW {
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> PerParameterAdamW {
        let params = trainable_by_name(vs)
            .into_iter()
            .map(|(_, v)| {
                let (exp_avg, exp_avg_sq, decays) = (v.zeros_like(), v.zeros_like(), v.dim() >= 2);
                (v, exp_avg, exp_avg_sq, decays)
            })
            .collect();
        PerParameterAdamW {
            params,
            step: 0,
            config,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.0.zero_grad();
        }
    }

    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.0.grad().norm().to_kind(Kind::Float))
                .collect();
            let total = Tensor::stack(&norms, 0).norm();
            let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            for p in &self.params {
                let mut grad = p.0.grad();
                grad *= &coef;
            }
            total
        })
    }

    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        tch::no_grad(|| {
            for (value, exp_avg, exp_avg_sq, decays) in &mut self.params {
                let grad = value.grad();
                if grad.defined() {
                    Update::new(&self.config, self.step, lr, *decays)
                        .apply(value, &grad, exp_avg, exp_avg_sq);
                }
            }
        })
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
        assert!(restored.groups[1].exp_avg.equal(&opt.groups[1].exp_avg));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            restored.load(&path, 1),
            Err(MlError::Checkpoint(_))
        ));
    }

    /// A small network of matrices, biases and an embedding, the same in two stores.
    fn network(vs: &nn::VarStore) -> impl Fn(&Tensor, &Tensor) -> Tensor + use<> {
        tch::manual_seed(3);
        let root = vs.root();
        let randn = |name: &str, dims: &[i64], stdev| {
            root.var(name, dims, nn::Init::Randn { mean: 0.0, stdev })
        };
        let emb = randn("emb", &[10, 8], 1.0);
        let w1 = randn("w1", &[8, 16], 0.3);
        let b1 = root.var("b1", &[16], nn::Init::Const(0.1));
        let w2 = randn("w2", &[16, 4], 0.3);
        move |ids, target| {
            let hidden = (emb.index_select(0, ids).matmul(&w1) + &b1).tanh();
            (hidden.matmul(&w2) - target).square().mean(Kind::Float)
        }
    }

    /// 100 steps of two micro-batches each on both optimizers; returns the largest
    /// difference between their parameters.
    fn train_both(clip: Option<f64>) -> f64 {
        let config = AdamWConfig::default();
        let (fused_vs, reference_vs) = (
            nn::VarStore::new(Device::Cpu),
            nn::VarStore::new(Device::Cpu),
        );
        let (fused_loss, reference_loss) = (network(&fused_vs), network(&reference_vs));
        let mut fused = AdamW::new(&fused_vs, config);
        let mut reference = PerParameterAdamW::new(&reference_vs, config);
        for step in 0..100 {
            for _ in 0..2 {
                let ids = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
                let target = Tensor::randn([32, 4], (Kind::Float, Device::Cpu));
                fused_loss(&ids, &target).backward();
                reference_loss(&ids, &target).backward();
            }
            let lr = 1e-2 * (1.0 - step as f64 / 200.0);
            if let Some(max_norm) = clip {
                let _ = fused.clip_grad_norm(max_norm);
                let _ = reference.clip_grad_norm(max_norm);
            }
            fused.step(lr);
            fused.zero_grad();
            reference.step(lr);
            reference.zero_grad();
        }
        // Backward kept accumulating into the flat buffer's views.
        for g in &fused.groups {
            for slot in &g.slots {
                assert_eq!(
                    slot.variable.grad().data_ptr(),
                    slot.of(&g.grads).data_ptr()
                );
            }
        }
        let (fused_vars, reference_vars) = (fused_vs.variables(), reference_vs.variables());
        fused_vars
            .iter()
            .map(|(name, v)| (v - &reference_vars[name]).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    #[test]
    fn the_flat_buffers_update_exactly_as_the_per_parameter_adamw() {
        assert_eq!(train_both(None), 0.0, "without clipping");
        assert_eq!(train_both(Some(0.5)), 0.0, "with clipping");
    }
}
