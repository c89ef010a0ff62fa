//! RLOO — REINFORCE with a leave-one-out baseline (Ahmadian et al., 2024; TRL's
//! `RLOOTrainer`) — against a reward model, on prompts.
//!
//! Each step the policy samples `samples` completions of each prompt of the batch (KV cache,
//! temperature sampling). The reward model scores each conversation, less `β ·` the
//! completion's KL to the reference: the sum over its tokens of log π − log π_ref, TRL's
//! sequence-level penalty. A completion's advantage is its score minus the mean score of the
//! prompt's other completions, and the loss is −advantage · log π(completion), averaged.
//!
//! RLOO rather than PPO: there is no value model to train beside the policy and no clipped
//! epochs over stored rollouts, since the other samples of a prompt are the baseline. Rather
//! than GRPO: the leave-one-out baseline is unbiased, and no per-group standard deviation
//! rescales the reward model's differences. The reference is the base under the policy's LoRA
//! adapters when it has them (no second model resident), else a frozen copy.

use crate::MlError;
use crate::align::{Step, sequence_logps};
use crate::chat::{self, Message, Role};
use crate::data::{Batch, Batches, Example, draw, padded};
use crate::generate::{FinishReason, GenerateOptions, generate};
use crate::gpt::{Context, Gpt};
use crate::tokenizer::{END_OF_TEXT, end_of_text};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlooConfig {
    /// Completions sampled per prompt (two or more: each one's baseline is the others').
    pub samples: usize,
    /// Weight of the KL penalty to the reference (TRL's `beta`).
    pub beta: f64,
    pub temperature: f64,
    pub max_new_tokens: usize,
}

impl Default for RlooConfig {
    /// TRL's `RLOOConfig`: four completions, β = 0.05, temperature 1.
    fn default() -> Self {
        RlooConfig {
            samples: 4,
            beta: 0.05,
            temperature: 1.0,
            max_new_tokens: 24,
        }
    }
}

impl RlooConfig {
    pub fn validate(&self) -> Result<(), MlError> {
        let bad = |why: &str| Err(MlError::Config(why.into()));
        if self.samples < 2 {
            return bad("RLOO needs two or more completions per prompt");
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad("RLOO's beta must be a non-negative number");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) || self.max_new_tokens == 0 {
            return bad("RLOO samples at a positive temperature, one token or more");
        }
        Ok(())
    }
}

/// The statistics an RLOO step reports: the reward model's mean score of the completions,
/// their mean KL to the reference, and the mean of score − β·KL.
pub const RLOO_STATS: [&str; 3] = ["reward", "kl", "score"];

/// What a batch of sampled completions carries besides its rows, `[rows]` each.
pub struct SampleRows {
    pub advantages: Tensor,
    pub rewards: Tensor,
    pub kl: Tensor,
}

/// A reward model and its tokenizer: the judge of the policy's completions.
pub struct Judge {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
}

/// Prompts the policy answers, `per_step` at a time, each epoch in its own seeded order.
/// Batches are sampled from the policy being trained ([`Batches::batch_from`]).
pub struct Prompts {
    prompts: Vec<String>,
    /// Each prompt in the chat template, encoded once.
    encoded: Vec<Vec<u32>>,
    per_step: usize,
    config: RlooConfig,
    tokenizer: Tokenizer,
    judge: Judge,
    /// None: the base under the policy's adapters.
    reference: Option<Gpt>,
    seed: u64,
}

impl Prompts {
    pub fn new(
        prompts: Vec<String>,
        per_step: usize,
        config: RlooConfig,
        tokenizer: Tokenizer,
        judge: Judge,
        reference: Option<Gpt>,
        seed: u64,
    ) -> Result<Prompts, MlError> {
        config.validate()?;
        if prompts.is_empty() || per_step == 0 {
            return Err(MlError::Empty("RLOO needs prompts to answer".into()));
        }
        if !judge.model.has_score_head() {
            return Err(MlError::Config("the judge has no score head".into()));
        }
        let encoded = prompts
            .iter()
            .map(|p| chat::prompt(&tokenizer, &[Message::new(Role::User, p.as_str())]))
            .collect::<Result<_, _>>()?;
        Ok(Prompts {
            prompts,
            encoded,
            per_step,
            config,
            tokenizer,
            judge,
            reference,
            seed,
        })
    }

    /// `samples` completions of each drawn prompt from `policy`: the policy's rows (prompt
    /// and completion, the completion scored) and the completions' text.
    fn sample(&self, policy: &Gpt, drawn: &[usize], index: u64) -> Result<Rollout, MlError> {
        let stop = chat::stop_tokens(&self.tokenizer);
        let end = self.tokenizer.token_to_id(END_OF_TEXT);
        let mut rollout = Rollout::default();
        for (n, &i) in drawn.iter().enumerate() {
            // Room for the completion.
            let block = policy.config.block_size as usize;
            let keep = block.saturating_sub(self.config.max_new_tokens + 1);
            let prompt = chat::keep_end(&self.encoded[i], keep);
            for s in 0..self.config.samples {
                let options = GenerateOptions {
                    max_tokens: self.config.max_new_tokens,
                    temperature: self.config.temperature,
                    stop_tokens: stop.clone(),
                    seed: self.seed ^ (index << 24) ^ ((n * self.config.samples + s) as u64),
                    ..Default::default()
                };
                let out = generate(policy, &self.tokenizer, prompt, &options, |_| {
                    ControlFlow::Continue(())
                })?;
                // The completion as sampled, and the end it chose when it chose one.
                let mut ids = [prompt, &out.tokens].concat();
                ids.extend(end.filter(|_| out.finish == FinishReason::Stop));
                let scored = (0..ids.len()).map(|j| j >= prompt.len()).collect();
                rollout.rows.push(Example { ids, scored });
                rollout.texts.push((i, out.text));
            }
        }
        Ok(rollout)
    }

    /// The judge's score of each completion, `[rows]`.
    fn judged(&self, texts: &[(usize, String)], device: Device) -> Result<Tensor, MlError> {
        let tokenizer = &self.judge.tokenizer;
        let block = self.judge.model.config.block_size as usize;
        let rows = texts
            .iter()
            .map(|(i, text)| {
                let conversation = [
                    Message::new(Role::User, self.prompts[*i].as_str()),
                    Message::new(Role::Assistant, text.as_str()),
                ];
                chat::render(tokenizer, &conversation)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows: Vec<&Example> = rows.iter().collect();
        let (input, _, last) = padded(&rows, block, end_of_text(tokenizer), device);
        tch::no_grad(|| {
            self.judge
                .model
                .reward(&input, &last, &Context::default(), false)
        })
    }
}

/// Sampled completions: the policy's rows and the text of each, with its prompt's index.
#[derive(Default)]
struct Rollout {
    rows: Vec<Example>,
    texts: Vec<(usize, String)>,
}

/// Each completion's score minus the mean score of the other completions of its prompt:
/// `scores` is `[prompts × samples]`, a prompt's completions together.
pub fn leave_one_out(scores: &Tensor, samples: i64) -> Tensor {
    let groups = scores.view([-1, samples]);
    let others = (groups.sum_dim_intlist(-1, true, Kind::Float) - &groups) / (samples - 1) as f64;
    (groups - others).view([-1])
}

impl Batches for Prompts {
    fn batch(&self, _index: u64, _device: Device) -> Result<Batch, MlError> {
        Err(MlError::Config(
            "RLOO's batches are sampled from the policy being trained".into(),
        ))
    }

    fn batch_from(&self, index: u64, device: Device, policy: &Gpt) -> Result<Batch, MlError> {
        let drawn = draw(self.seed, index, self.per_step, self.prompts.len());
        let rollout = self.sample(policy, &drawn, index)?;
        let block = policy.config.block_size as usize;
        let rows: Vec<&Example> = rollout.rows.iter().collect();
        let (input, target, _) = padded(&rows, block, end_of_text(&self.tokenizer), device);
        let mut batch = Batch {
            input,
            target,
            positions: None,
            mask: None,
            text_from: None,
            pairs: None,
            samples: None,
        };
        let kl = tch::no_grad(|| -> Result<Tensor, MlError> {
            let (own, _) = sequence_logps(policy, &batch, false, false)?;
            let (reference, _) = match &self.reference {
                Some(reference) => sequence_logps(reference, &batch, false, false)?,
                None if policy.adapters().is_some() => sequence_logps(policy, &batch, true, false)?,
                None => {
                    return Err(MlError::Config(
                        "RLOO needs a reference: adapters on the policy, or a frozen copy".into(),
                    ));
                }
            };
            Ok(own - reference)
        })?;
        let rewards = self.judged(&rollout.texts, device)?;
        let scores = &rewards - &kl * self.config.beta;
        batch.samples = Some(SampleRows {
            advantages: leave_one_out(&scores, self.config.samples as i64),
            rewards,
            kl,
        });
        Ok(batch)
    }

    /// Completion tokens at most.
    fn tokens_per_batch(&self) -> usize {
        self.per_step * self.config.samples * self.config.max_new_tokens
    }
}

/// The REINFORCE loss of a batch of sampled completions: −advantage · log π(completion),
/// averaged; with the batch's mean reward, KL and score.
pub fn rloo_step(model: &Gpt, batch: &Batch, config: &RlooConfig) -> Result<Step, MlError> {
    let samples = batch.samples.as_ref().ok_or_else(|| {
        MlError::Data("RLOO needs batches of completions sampled from the policy".into())
    })?;
    let (logps, _) = sequence_logps(model, batch, false, true)?;
    let loss = -(&samples.advantages * logps).mean(Kind::Float);
    let score = &samples.rewards - &samples.kl * config.beta;
    let stats = Tensor::stack(
        &[
            samples.rewards.mean(Kind::Float),
            samples.kl.mean(Kind::Float),
            score.mean(Kind::Float),
        ],
        0,
    );
    Ok(Step {
        loss,
        stats: Some(stats),
    })
}
