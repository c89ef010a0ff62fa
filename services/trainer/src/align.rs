//! Alignment on preference pairs: DPO of the base (every weight, against the base's own
//! log-probabilities, computed once and kept with the job) or a Bradley–Terry reward model
//! (the base's body with a scalar head).
//!
//! A DPO run is held to the gate's held-out limits as a fine-tuning is ([`crate::tuning`]):
//! it is probed every `probe_interval` steps and hands on the checkpoint inside the limits that
//! gives the preferred responses the lowest loss (a small policy taught a few pairs for long
//! soon forgets its corpus). A pair a model version learnt (its own datasets', or a child's of
//! the same run kind) is not trained on it again; the datasets' pairs are split, when there is no validation split,
//! every tenth held out (from ten pairs up), and the readings on both go into model.trained.

use crate::data::{Data, Forgotten, Records};
use crate::{Job, Run, TrainerService, tuning};
use quark_events::bus::HandlerError;
use quark_events::{DatasetPrepared, Id, RunKind};
use quark_lineage::Model;
use quark_ml::align::{self, DpoConfig, DpoLoss, Objective, PairReading, RewardConfig};
use quark_ml::checkpoint;
use quark_ml::preference::{self, Pair, Pairs};
use quark_ml::train::{TrainConfig, Trainer};
use quark_ml::{Tokenizer, tokenizer};
use std::collections::HashMap;
use std::path::Path;

/// The reference log-probabilities of a DPO job's pairs, in its directory.
const REFERENCE: &str = "reference.json";

/// What an alignment job is asked to do (the plan's parts).
pub(crate) struct Inputs<'a> {
    pub run_kind: RunKind,
    pub base: &'a Model,
    /// A ppo run's reward model.
    pub judge: Option<&'a Model>,
    pub datasets: &'a [DatasetPrepared],
    pub records: &'a Records,
    pub pretraining: &'a [DatasetPrepared],
    pub forgotten: &'a Forgotten,
}

/// What a job's model is read on once it is trained.
pub(crate) struct Readings {
    pub train: Pairs,
    pub held_out: Option<Pairs>,
    pub objective: Objective,
}

/// A training split and a held-out one: the validation records, or every tenth pair.
pub(crate) fn split(records: &Records) -> Result<(Vec<Pair>, Vec<Pair>), HandlerError> {
    let parse = |texts: &[String]| -> Result<Vec<Pair>, HandlerError> {
        texts
            .iter()
            .map(|t| {
                Pair::parse(t)
                    .map_err(|why| HandlerError::permanent(format!("a preference record: {why}")))
            })
            .collect()
    };
    let (train, validation) = (parse(&records.train)?, parse(&records.validation)?);
    if !validation.is_empty() || train.len() < 10 {
        return Ok((train, validation));
    }
    let (held, kept): (Vec<_>, Vec<_>) = train
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 10 == 9);
    let strip = |v: Vec<(usize, Pair)>| v.into_iter().map(|(_, p)| p).collect();
    Ok((strip(kept), strip(held)))
}

impl TrainerService {
    fn objective(&self, run_kind: RunKind) -> Result<Objective, HandlerError> {
        let a = &self.settings.align;
        Ok(match run_kind {
            RunKind::Dpo => Objective::Dpo(DpoConfig {
                beta: a.beta,
                loss: match a.loss.as_str() {
                    "sigmoid" => DpoLoss::Sigmoid,
                    "ipo" => DpoLoss::Ipo,
                    other => {
                        return Err(HandlerError::permanent(format!(
                            "trainer.align.loss {other}: expected sigmoid or ipo"
                        )));
                    }
                },
            }),
            RunKind::Ppo => Objective::Rloo(self.rloo_config()),
            _ => Objective::Reward(RewardConfig {
                center_rewards_coefficient: (a.center_rewards_coefficient > 0.0)
                    .then_some(a.center_rewards_coefficient),
            }),
        })
    }

    fn pairs(
        &self,
        tokenizer: &Tokenizer,
        pairs: &[Pair],
        block: i64,
    ) -> Result<Pairs, HandlerError> {
        let encoded = preference::encode(tokenizer, pairs).map_err(HandlerError::permanent)?;
        let pad = tokenizer::end_of_text(tokenizer);
        Pairs::new(
            encoded,
            self.settings.align.pairs_per_step,
            block as usize,
            pad,
            self.settings.seed,
        )
        .map_err(HandlerError::permanent)
    }

    /// An alignment run's settings: `steps` at a peak `lr` (warm-up over a tenth of them,
    /// then cosine to a tenth of it), the run's own objective and no pull toward the base.
    pub(crate) fn align_config(
        &self,
        device: tch::Device,
        block: i64,
        (steps, lr): (u64, f64),
        objective: Objective,
    ) -> TrainConfig {
        let mut config = self.train_config(device, true, block);
        config.max_steps = steps;
        config.schedule.max_lr = lr;
        config.schedule.min_lr = lr / 10.0;
        config.schedule.warmup_steps = steps / 10;
        config.schedule.decay_steps = steps;
        config.kl_weight = 0.0;
        config.objective = objective;
        config
    }

    /// A new run of `run_kind` in `run_dir`, from the base's checkpoint (unpacked into
    /// `base_dir`): a reward model with a new scalar head, a ppo run with the configured
    /// adapters, `prompts_per_step × samples` completions a step.
    pub(crate) fn start(
        &self,
        run_kind: RunKind,
        base_dir: &Path,
        run_dir: &Path,
        device: tch::Device,
    ) -> Result<Trainer, HandlerError> {
        let (mut model, tokenizer) =
            checkpoint::load(base_dir, device).map_err(HandlerError::permanent)?;
        let (a, r) = (&self.settings.align, &self.settings.rloo);
        let steps = match run_kind {
            RunKind::Reward => {
                model
                    .add_score_head(Some(self.settings.seed))
                    .map_err(HandlerError::permanent)?;
                (a.steps, a.lr)
            }
            RunKind::Ppo => {
                tuning::adapt(&mut model, &self.settings)?;
                (r.steps, r.lr)
            }
            _ => (a.steps, a.lr),
        };
        let objective = self.objective(run_kind)?;
        let mut config = self.align_config(device, model.config.block_size, steps, objective);
        if run_kind == RunKind::Ppo {
            config.batch_size = r.prompts_per_step * r.samples;
        }
        Trainer::start(
            model,
            tokenizer,
            config,
            Some(base_dir.to_path_buf()),
            run_dir,
        )
        .map_err(HandlerError::permanent)
    }

    /// The job of a DPO or reward run, new or resumed in `dir`. A DPO run is probed as a
    /// fine-tuning is: the checkpoint handed on is the one inside the gate's held-out limits
    /// that gives the preferred responses the lowest loss.
    pub(crate) async fn align_job(
        &self,
        inputs: Inputs<'_>,
        dir: &Path,
        run: &Run,
    ) -> Result<Job, HandlerError> {
        if inputs.run_kind == RunKind::Ppo {
            return self.rloo_job(inputs, dir, run).await;
        }
        let (train, held_out) = split(inputs.records)?;
        let (device, resuming) = (run.device, run.resuming);
        let base_dir = self
            .store
            .get_dir(&inputs.base.checkpoint, &dir.join("base"))
            .await
            .map_err(HandlerError::transient)?;
        let trainer =
            run.trainer(|run_dir| self.start(inputs.run_kind, &base_dir, run_dir, device))?;
        let dpo = inputs.run_kind == RunKind::Dpo;
        let (tokenizer, block) = (&trainer.tokenizer, trainer.model.config.block_size);
        let pairs = |pairs: &[Pair], file: &str| -> Result<Pairs, HandlerError> {
            let encoded = self.pairs(tokenizer, pairs, block)?;
            match dpo {
                true => align::kept_reference(&trainer.model, encoded, &dir.join(file), resuming)
                    .map_err(HandlerError::permanent),
                false => Ok(encoded),
            }
        };
        let train = pairs(&train, REFERENCE)?;
        let data = Data {
            batches: Box::new(train.clone()),
            validation: vec![],
            taught: train.chosen(),
            held_out: self.held_out_text(inputs.pretraining, inputs.forgotten)?,
            forgotten_left_out: inputs.forgotten.left_out(),
        };
        let readings = Readings {
            train,
            held_out: match held_out.is_empty() {
                true => None,
                false => Some(pairs(&held_out, "reference_held_out.json")?),
            },
            objective: trainer.state().config.objective,
        };
        let selector = match dpo {
            // A resumed run's model is not the base any more: the base is read from its checkpoint.
            true => {
                let base = match resuming {
                    true => Some(
                        checkpoint::load(&base_dir, device)
                            .map_err(HandlerError::permanent)?
                            .0,
                    ),
                    false => None,
                };
                Some(tuning::selector(
                    &trainer,
                    &data,
                    base.as_ref(),
                    &self.settings,
                    &self.gate,
                    dir,
                )?)
            }
            false => None,
        };
        Ok(Job {
            run_kind: inputs.run_kind,
            parent: Some(inputs.base.model_id),
            dataset_ids: inputs
                .datasets
                .iter()
                .map(|d| d.dataset_id)
                .collect::<Vec<Id>>(),
            tokenizer_id: inputs.base.tokenizer_id,
            trainer,
            data,
            selector,
            readings: Some(readings),
        })
    }
}

/// model.trained's metrics of an aligned model: its readings on the pairs it trained on and
/// on the held-out ones (`heldout_rewards_accuracy`, …).
pub(crate) fn metrics(
    trainer: &Trainer,
    readings: &Readings,
) -> Result<HashMap<String, f64>, HandlerError> {
    let read = |pairs: &Pairs| -> Result<PairReading, HandlerError> {
        match readings.objective {
            Objective::Dpo(c) => align::read_policy(&trainer.model, pairs, c.beta),
            _ => align::read_reward_model(&trainer.model, pairs),
        }
        .map_err(HandlerError::permanent)
    };
    let mut metrics: HashMap<String, f64> = read(&readings.train)?
        .metrics("train_")
        .into_iter()
        .collect();
    if let Some(held_out) = &readings.held_out {
        metrics.extend(read(held_out)?.metrics("heldout_"));
        metrics.insert("heldout_pairs".into(), held_out.len() as f64);
    }
    metrics.insert("train_pairs".into(), readings.train.len() as f64);
    Ok(metrics)
}
