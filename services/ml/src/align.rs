//! Learning from preferences: the objectives a [`crate::train::Trainer`] optimises on
//! [`crate::preference::Pairs`], and the readings of a model on held-out pairs.
//!
//! - **DPO** (Rafailov et al.): the policy's log-ratio to a frozen reference on the chosen
//!   response minus that on the rejected, `-log σ(β Δ)`; or IPO's `(Δ/len − 1/2β)²` on
//!   length-averaged log-ratios, as TRL computes it. The reference's log-probabilities are
//!   computed once per pair before training ([`reference_logps`]): no second model is
//!   resident while the policy trains.
//! - **Reward model** (Bradley–Terry): a scalar head on the GPT body scores the last token of
//!   each conversation; `-log σ(r_c − r_r − margin)`, plus TRL's
//!   `center_rewards_coefficient · mean((r_c + r_r)²)` which keeps rewards centred on zero.

use crate::MlError;
use crate::data::{Batch, PairRows};
use crate::distill::{DISTILL_STATS, DistillConfig};
use crate::gpt::{Context, Gpt, IGNORE};
use crate::preference::Pairs;
use crate::rloo::{RLOO_STATS, RlooConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    Sigmoid,
    Ipo,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    pub beta: f64,
    pub loss: DpoLoss,
}

impl Default for DpoConfig {
    /// TRL's defaults: the sigmoid loss with β = 0.1.
    fn default() -> Self {
        DpoConfig {
            beta: 0.1,
            loss: DpoLoss::Sigmoid,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardConfig {
    /// TRL's `center_rewards_coefficient`; none turns centring off.
    pub center_rewards_coefficient: Option<f64>,
}

/// What a training run minimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Objective {
    /// Next-token cross-entropy (pre-training, SFT).
    #[default]
    NextToken,
    Dpo(DpoConfig),
    Reward(RewardConfig),
    /// On completions sampled from the policy each step ([`crate::rloo`]).
    Rloo(RlooConfig),
    /// The teacher's next-token distribution ([`crate::distill`]).
    Distill(DistillConfig),
}

/// The statistics a preference step reports beside its loss, in this order.
pub const PAIR_STATS: [&str; 4] = [
    "rewards_chosen",
    "rewards_rejected",
    "rewards_margin",
    "rewards_accuracy",
];

impl Objective {
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |why: &str| Err(MlError::Config(why.into()));
        match self {
            Objective::Dpo(c) if !(c.beta > 0.0 && c.beta.is_finite()) => {
                bad("DPO's beta must be a positive number")
            }
            Objective::Reward(RewardConfig {
                center_rewards_coefficient: Some(c),
            }) if !(*c >= 0.0 && c.is_finite()) => {
                bad("the reward centring coefficient must be a non-negative number")
            }
            Objective::Rloo(c) => c.validate(),
            Objective::Distill(c) => c.validate(),
            _ => Ok(()),
        }
    }

    /// Names of the statistics [`Step::stats`] holds.
    pub fn stat_names(&self) -> &'static [&'static str] {
        match self {
            Objective::NextToken => &[],
            Objective::Dpo(_) | Objective::Reward(_) => &PAIR_STATS,
            Objective::Rloo(_) => &RLOO_STATS,
            Objective::Distill(_) => &DISTILL_STATS,
        }
    }
}

/// One micro-batch's loss and the statistics of [`Objective::stat_names`] (`[k]`, detached).
pub struct Step {
    pub loss: Tensor,
    pub stats: Option<Tensor>,
}

fn pair_rows(batch: &Batch) -> Result<&PairRows, MlError> {
    batch
        .pairs
        .as_ref()
        .ok_or_else(|| MlError::Data("a preference objective needs batches of pairs".into()))
}

/// The summed log-probability of each row's scored tokens and how many there are, `[rows]`
/// each; with `base_only`, under the base of the model's adapters.
pub fn sequence_logps(
    model: &Gpt,
    batch: &Batch,
    base_only: bool,
    train: bool,
) -> Result<(Tensor, Tensor), MlError> {
    let context = Context {
        base_only,
        ..Context::default()
    };
    let logits = model.forward(&batch.input, &context, None, train)?;
    let (rows, vocab) = (batch.input.size()[0], model.config.vocab_size);
    // Cross-entropy per token is minus the log-probability, 0 where the target is ignored.
    let nll = logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
        &batch.target.view([-1]),
        None,
        tch::Reduction::None,
        IGNORE,
        0.0,
    );
    let logps = -nll.view([rows, -1]).sum_dim_intlist(-1, false, Kind::Float);
    let lengths = batch
        .target
        .ne(IGNORE)
        .sum_dim_intlist(-1, false, Kind::Float);
    Ok((logps, lengths))
}

/// The reference model's log-probabilities of every pair's (chosen, rejected) response, in
/// order: `model` itself, or the base under its adapters when it has them.
pub fn reference_logps(model: &Gpt, pairs: &Pairs) -> Result<Vec<[f32; 2]>, MlError> {
    let base_only = model.adapters().is_some();
    tch::no_grad(|| {
        let mut out = Vec::with_capacity(pairs.len());
        for batch in pairs.sequential(model.device()) {
            let (logps, _) = sequence_logps(model, &batch, base_only, false)?;
            let logps = Vec::<f32>::try_from(logps.to_device(tch::Device::Cpu))?;
            let n = logps.len() / 2;
            out.extend((0..n).map(|i| [logps[i], logps[n + i]]));
        }
        Ok(out)
    })
}

/// `pairs` with their reference log-probabilities kept in `file`: read back when it exists,
/// else computed by `model` and written there. Only the starting model is the reference: with
/// `started` (a resumed run, whose model has moved on) a missing file is an error.
pub fn kept_reference(
    model: &Gpt,
    pairs: Pairs,
    file: &Path,
    started: bool,
) -> Result<Pairs, MlError> {
    let logps: Vec<[f32; 2]> = match std::fs::read_to_string(file) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| MlError::Data(format!("{}: {e}", file.display())))?,
        Err(_) if started => {
            return Err(MlError::Data(format!(
                "{} is missing: a resumed run cannot recompute its reference",
                file.display()
            )));
        }
        Err(_) => {
            let logps = reference_logps(model, &pairs)?;
            let text = serde_json::to_string(&logps).map_err(|e| MlError::Data(e.to_string()))?;
            std::fs::write(file, text).map_err(MlError::io(file))?;
            logps
        }
    };
    pairs.with_reference(logps)
}

/// The four [`PAIR_STATS`] of per-pair chosen and rejected rewards.
fn pair_stats(chosen: &Tensor, rejected: &Tensor) -> Tensor {
    let margin = chosen - rejected;
    Tensor::stack(
        &[
            chosen.mean(Kind::Float),
            rejected.mean(Kind::Float),
            margin.mean(Kind::Float),
            margin.gt(0.0).to_kind(Kind::Float).mean(Kind::Float),
        ],
        0,
    )
    .detach()
}

fn halves(t: &Tensor) -> (Tensor, Tensor) {
    let n = t.size()[0] / 2;
    (t.narrow(0, 0, n), t.narrow(0, n, n))
}

/// DPO's loss on a batch of pairs carrying their reference log-probabilities; the rewards
/// are `β ·` the log-ratios, as TRL logs them.
pub fn dpo_step(model: &Gpt, batch: &Batch, config: &DpoConfig) -> Result<Step, MlError> {
    let rows = pair_rows(batch)?;
    let reference = rows.reference.as_ref().ok_or_else(|| {
        MlError::Data("DPO needs the reference log-probabilities of its pairs".into())
    })?;
    let (logps, lengths) = sequence_logps(model, batch, false, true)?;
    let ratios = &logps - reference;
    let (chosen, rejected) = halves(&ratios);
    let beta = config.beta;
    let loss = match config.loss {
        DpoLoss::Sigmoid => (-(&chosen - &rejected) * beta).softplus(),
        DpoLoss::Ipo => {
            let (lc, lr) = halves(&lengths.clamp_min(1.0));
            let delta = &chosen / lc - &rejected / lr;
            (delta - 1.0 / (2.0 * beta)).square()
        }
    }
    .mean(Kind::Float);
    let stats = pair_stats(&(&chosen * beta), &(&rejected * beta));
    Ok(Step {
        loss,
        stats: Some(stats),
    })
}

/// The Bradley–Terry loss of a reward model on a batch of pairs.
pub fn reward_step(model: &Gpt, batch: &Batch, config: &RewardConfig) -> Result<Step, MlError> {
    let rows = pair_rows(batch)?;
    let rewards = model.reward(&batch.input, &rows.last, &Context::default(), true)?;
    let (chosen, rejected) = halves(&rewards);
    // -log σ(x) = softplus(-x)
    let mut loss = (-(&chosen - &rejected - &rows.margin))
        .softplus()
        .mean(Kind::Float);
    if let Some(c) = config.center_rewards_coefficient {
        loss += (&chosen + &rejected).square().mean(Kind::Float) * c;
    }
    let stats = pair_stats(&chosen, &rejected);
    Ok(Step {
        loss,
        stats: Some(stats),
    })
}

/// Mean rewards of chosen and rejected responses over a set of pairs, the mean margin and
/// the share of pairs where the chosen response wins.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairReading {
    pub chosen: f64,
    pub rejected: f64,
    pub margin: f64,
    pub accuracy: f64,
}

impl PairReading {
    /// As model.trained metrics: `<prefix>rewards_chosen`, ….
    pub fn metrics(&self, prefix: &str) -> Vec<(String, f64)> {
        let values = [self.chosen, self.rejected, self.margin, self.accuracy];
        PAIR_STATS
            .iter()
            .zip(values)
            .map(|(name, v)| (format!("{prefix}{name}"), v))
            .collect()
    }
}

fn read_pairs(
    pairs: &Pairs,
    model: &Gpt,
    rewards: impl Fn(&Batch) -> Result<Tensor, MlError>,
) -> Result<PairReading, MlError> {
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    tch::no_grad(|| -> Result<(), MlError> {
        for batch in pairs.sequential(model.device()) {
            let (c, r) = halves(&rewards(&batch)?.to_device(tch::Device::Cpu));
            chosen.extend(Vec::<f32>::try_from(c)?);
            rejected.extend(Vec::<f32>::try_from(r)?);
        }
        Ok(())
    })?;
    let n = chosen.len().max(1) as f64;
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let wins = chosen.iter().zip(&rejected).filter(|(c, r)| c > r).count();
    Ok(PairReading {
        chosen: mean(&chosen),
        rejected: mean(&rejected),
        margin: mean(&chosen) - mean(&rejected),
        accuracy: wins as f64 / n,
    })
}

/// A policy's implicit DPO rewards (`β ·` log-ratio to the reference) on `pairs`, which carry
/// their reference log-probabilities.
pub fn read_policy(model: &Gpt, pairs: &Pairs, beta: f64) -> Result<PairReading, MlError> {
    read_pairs(pairs, model, |batch| {
        let reference = pair_rows(batch)?.reference.as_ref().ok_or_else(|| {
            MlError::Data("reading a policy needs the reference log-probabilities".into())
        })?;
        let (logps, _) = sequence_logps(model, batch, false, false)?;
        Ok((logps - reference) * beta)
    })
}

/// A reward model's scores on `pairs`.
pub fn read_reward_model(model: &Gpt, pairs: &Pairs) -> Result<PairReading, MlError> {
    read_pairs(pairs, model, |batch| {
        model.reward(
            &batch.input,
            &pair_rows(batch)?.last,
            &Context::default(),
            false,
        )
    })
}
