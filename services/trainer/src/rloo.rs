//! Policy optimisation (ppo runs) by RLOO ([`quark_ml::rloo`]): the base samples completions
//! of prompts from served traffic, the newest reward model trained from the base scores them,
//! and the base learns from each completion's score less the mean of its prompt's others,
//! with a KL penalty to the base. With LoRA adapters (`trainer.lora.rank` above 0) the
//! reference is the base under them, so no second policy is resident; without, a frozen copy.
//! The policy is a model.trained like any other: the gate judges it (perplexity, the reward
//! model's win rate over the champion, safety).

use crate::align::Inputs;
use crate::data::{Data, Records};
use crate::{Job, Run, TrainerService};
use quark_events::RunKind;
use quark_events::bus::HandlerError;
use quark_ml::checkpoint;
use quark_ml::rloo::{Judge, Prompts, RLOO_STATS, RlooConfig};
use quark_ml::train::TrainerState;
use std::collections::HashMap;
use std::path::Path;

/// The prompts of a prompts dataset's records (`{"prompt": …}` each), both splits.
fn prompts(records: &Records) -> Result<Vec<String>, HandlerError> {
    records
        .train
        .iter()
        .chain(&records.validation)
        .map(|text| {
            let record: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                HandlerError::permanent(format!("a prompts record is not JSON: {e}"))
            })?;
            match record["prompt"].as_str().map(str::trim) {
                Some(prompt) if !prompt.is_empty() => Ok(prompt.to_string()),
                _ => Err(HandlerError::permanent(
                    "a prompts record needs a non-empty \"prompt\"",
                )),
            }
        })
        .collect()
}

impl TrainerService {
    pub(crate) fn rloo_config(&self) -> RlooConfig {
        let r = &self.settings.rloo;
        RlooConfig {
            samples: r.samples,
            beta: r.beta,
            temperature: r.temperature,
            max_new_tokens: r.max_new_tokens,
        }
    }

    /// The job of a ppo run, new or resumed in `dir`.
    pub(crate) async fn rloo_job(
        &self,
        inputs: Inputs<'_>,
        dir: &Path,
        run: &Run,
    ) -> Result<Job, HandlerError> {
        let device = run.device;
        let judge = inputs
            .judge
            .ok_or_else(|| HandlerError::permanent("a ppo run needs a reward model"))?;
        let prompts = prompts(inputs.records)?;
        let base_dir = self
            .store
            .get_dir(&inputs.base.checkpoint, &dir.join("base"))
            .await
            .map_err(HandlerError::transient)?;
        let judge_dir = self
            .store
            .get_dir(&judge.checkpoint, &dir.join("judge"))
            .await
            .map_err(HandlerError::transient)?;
        let (model, tokenizer) =
            checkpoint::load(&judge_dir, device).map_err(HandlerError::permanent)?;
        let trainer =
            run.trainer(|run_dir| self.start(RunKind::Ppo, &base_dir, run_dir, device))?;
        let reference = match trainer.model.adapters() {
            Some(_) => None,
            None => Some(
                checkpoint::load(&base_dir, device)
                    .map_err(HandlerError::permanent)?
                    .0,
            ),
        };
        let batches = Prompts::new(
            prompts,
            self.settings.rloo.prompts_per_step,
            self.rloo_config(),
            trainer.tokenizer.clone(),
            Judge { model, tokenizer },
            reference,
            self.settings.seed,
        )
        .map_err(HandlerError::permanent)?;
        Ok(Job {
            run_kind: RunKind::Ppo,
            parent: Some(inputs.base.model_id),
            dataset_ids: inputs.datasets.iter().map(|d| d.dataset_id).collect(),
            tokenizer_id: inputs.base.tokenizer_id,
            trainer,
            data: Data {
                batches: Box::new(batches),
                validation: vec![],
                taught: vec![],
                held_out: vec![],
                forgotten_left_out: inputs.forgotten.left_out(),
            },
            selector: None,
            readings: None,
        })
    }
}

/// model.trained's metrics of a ppo run: the reward model's mean score of the policy's
/// completions, their KL to the reference and score less β·KL, over the last steps logged
/// (`rloo_reward`, `rloo_kl`, `rloo_score`).
pub(crate) fn metrics(state: &TrainerState) -> HashMap<String, f64> {
    RLOO_STATS
        .iter()
        .filter_map(|stat| Some((format!("rloo_{stat}"), *state.train_stats.get(*stat)?)))
        .collect()
}
