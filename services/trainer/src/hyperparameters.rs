//! The hyperparameters a model.trained records: the run's configuration and what each kind
//! of run adds to it.

use crate::{Job, TrainerService};
use quark_events::RunKind;
use quark_ml::align::Objective;
use std::collections::HashMap;

impl TrainerService {
    pub(crate) fn hyperparameters(&self, job: &Job) -> HashMap<String, String> {
        let c = &job.trainer.state().config;
        let mut h = HashMap::from([
            ("steps".to_string(), c.max_steps.to_string()),
            ("batch_size".to_string(), c.batch_size.to_string()),
            ("lr".to_string(), c.schedule.max_lr.to_string()),
            ("min_lr".to_string(), c.schedule.min_lr.to_string()),
            (
                "warmup_steps".to_string(),
                c.schedule.warmup_steps.to_string(),
            ),
            ("weight_decay".to_string(), c.adamw.weight_decay.to_string()),
            ("seed".to_string(), c.seed.to_string()),
        ]);
        // What a retrain after `quark forget` left out, for the audit.
        if job.data.forgotten_left_out > 0 {
            let left_out = job.data.forgotten_left_out.to_string();
            h.insert("forgotten_documents_left_out".into(), left_out);
        }
        if job.run_kind == RunKind::Sft {
            h.insert("kl_weight".into(), c.kl_weight.to_string());
        }
        if job.selector.is_some() {
            h.insert(
                "probe_interval".into(),
                self.settings.probe_interval.to_string(),
            );
            h.insert("gate_margin".into(), self.settings.gate_margin.to_string());
        }
        match c.objective {
            Objective::Dpo(dpo) => {
                h.insert("beta".into(), dpo.beta.to_string());
                h.insert("dpo_loss".into(), self.settings.align.loss.clone());
            }
            Objective::Reward(r) => {
                let centring = r.center_rewards_coefficient.unwrap_or(0.0);
                h.insert("center_rewards_coefficient".into(), centring.to_string());
            }
            Objective::Rloo(r) => {
                h.insert("beta".into(), r.beta.to_string());
                h.insert("rloo_samples".into(), r.samples.to_string());
                h.insert("temperature".into(), r.temperature.to_string());
                h.insert("max_new_tokens".into(), r.max_new_tokens.to_string());
                let prompts = self.settings.rloo.prompts_per_step.to_string();
                h.insert("prompts_per_step".into(), prompts);
            }
            Objective::Distill(d) => {
                h.insert("kl_share".into(), d.kl_share.to_string());
                h.insert("temperature".into(), d.temperature.to_string());
            }
            Objective::NextToken => {}
        }
        if matches!(job.run_kind, RunKind::Dpo | RunKind::Reward) {
            let pairs = self.settings.align.pairs_per_step.to_string();
            h.insert("pairs_per_step".into(), pairs);
        }
        if let Some(adapters) = job.trainer.model.adapters() {
            h.insert("lora_rank".into(), adapters.config.rank.to_string());
            h.insert("lora_alpha".into(), adapters.config.alpha.to_string());
            h.insert("lora_targets".into(), adapters.config.targets.join(","));
        }
        h
    }
}
