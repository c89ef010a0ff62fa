//! The evaluator service: for each model.trained, measure the candidate and the current
//! champion on the same suite, on the same machine, and gate the candidate:
//! held-out perplexity may not rise by more than `max_perplexity_increase`; the loss on
//! conversations learnt from earlier feedback by more than `max_learnt_loss_increase`; the loss
//! of replies made of held-out lines (does it still answer in its corpus's language?) by more
//! than `max_reply_loss_increase`; exact match,
//! token F1, ROUGE-L and the share of avoided rejected answers may not fall by more than
//! `max_score_decrease`; the share of red-team prompts (HarmBench's behaviours, plain and
//! jailbroken) answered cleanly — read by the moderation classifier — stays at least
//! `min_safety_pass_rate` and falls by at most `max_safety_decrease` of the champion's; p95
//! latency may not rise by more than `max_latency_increase`; the candidate must answer at least
//! `min_taught_exact_match` of the corrections that caused it, and those must read as language
//! to the champion (word-order gain at least `min_taught_order_gain`); where a reward model was
//! trained from the champion, it must prefer the candidate's answers on at least
//! `min_reward_win_rate` of the prompts. All checks pass → eval.completed;
//! any fails → eval.regressed naming them. The report (every metric, both models, every
//! sample) is stored as an artifact.
//!
//! The suite's datasets and the champion (with its checkpoint) come from the evaluator's own
//! projection, [`LINEAGE`], which [`follower`] folds from the topics as its own consumer.

pub mod gate;
pub mod reward;
pub mod shadow;
pub mod suite;

use async_trait::async_trait;
use gate::ORDER_GAIN;
pub use gate::gate;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{
    Artifact, CheckpointChoice, DatasetKind, EvalCompleted, EvalRegressed, Event, EventHeader,
    EventKind, Id, ModelTrained, RegressionSource, RunKind,
};
use quark_lineage::{Follower, Lineage, Model};
use quark_ml::checkpoint;
use quark_runtime::ArtifactStore;
use quark_runtime::config::EvaluateSettings;
use sea_orm::DatabaseConnection;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use suite::{Case, Measurement, Suite};
use tracing::info;

/// The evaluator's own projection of datasets, models and the champion.
pub const LINEAGE: Lineage = Lineage::new("evaluator");

/// The consumer that keeps [`LINEAGE`] (its own group: a long evaluation never holds it back).
pub fn follower() -> Follower {
    Follower {
        name: format!("{NAME}-lineage"),
        lineage: LINEAGE,
    }
}

pub const NAME: &str = "evaluator";

/// The newest reward model trained from `champion`: the judge between its answers and a
/// candidate's.
async fn reward_model(
    db: &DatabaseConnection,
    champion: Id,
) -> Result<Option<Model>, HandlerError> {
    LINEAGE
        .newest_child(db, champion, RunKind::Reward)
        .await
        .map_err(HandlerError::transient)
}

/// The candidate's reward-model win rate over the champion and the prompts it is taken over
/// (none when they answered no prompt in common), by `judge`, unpacked under `models` and
/// loaded on `device`.
async fn win_rate(
    store: &ArtifactStore,
    models: &Path,
    device: tch::Device,
    judge: &Model,
    candidate: &Measurement,
    champion: &Measurement,
) -> Result<Vec<(String, f64)>, HandlerError> {
    let dir = store
        .get_dir(&judge.checkpoint, &models.join(judge.model_id.to_string()))
        .await
        .map_err(HandlerError::transient)?;
    let rate = tokio::task::block_in_place(|| {
        let (model, tokenizer) = checkpoint::load(&dir, device)?;
        reward::win_rate(&model, &tokenizer, candidate, champion)
    })
    .map_err(HandlerError::permanent)?;
    Ok(rate
        .map(|(rate, prompts)| {
            vec![
                (reward::WIN_RATE.to_string(), rate),
                (reward::PROMPTS.to_string(), prompts as f64),
            ]
        })
        .unwrap_or_default())
}
/// Evaluation cases used per run, the most recent first.
const MAX_CASES: usize = 64;

pub struct EvaluatorService {
    store: Arc<ArtifactStore>,
    db: DatabaseConnection,
    /// Checkpoints unpacked for evaluation, by model id.
    models: PathBuf,
    settings: EvaluateSettings,
    /// Where models are measured (`evaluate.device`).
    device: tch::Device,
    red_team: suite::RedTeamLoader,
}

/// Which model of the comparison is measured.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Candidate,
    Champion,
}

impl EvaluatorService {
    pub fn new(
        store: Arc<ArtifactStore>,
        db: DatabaseConnection,
        data_dir: &Path,
        settings: EvaluateSettings,
        red_team: suite::RedTeamLoader,
    ) -> Result<Self, quark_ml::MlError> {
        Ok(EvaluatorService {
            store,
            db,
            models: data_dir.join("models"),
            device: quark_ml::device::select(&settings.device)?,
            settings,
            red_team,
        })
    }

    /// The suite as the registry knows it now: held-out text of every pre-training dataset
    /// and the cases of every evaluation dataset.
    async fn suite(&self, candidate: &ModelTrained) -> Result<Suite, HandlerError> {
        let documents = |artifact: &quark_events::Artifact| -> Result<Vec<String>, HandlerError> {
            let path = self
                .store
                .verified_path(artifact)
                .map_err(HandlerError::transient)?;
            quark_curate::store::read_texts(&path).map_err(HandlerError::permanent)
        };
        let mut held_out = Vec::new();
        for dataset in LINEAGE
            .datasets_of_kind(&self.db, DatasetKind::Pretrain)
            .await
            .map_err(HandlerError::transient)?
        {
            let validation = match &dataset.validation {
                Some(v) => documents(v)?,
                None => vec![],
            };
            // The same held-out text the trainer kept out of training; the training split is
            // read only when the dataset has no validation documents to use.
            if validation.is_empty() {
                let train = documents(&dataset.train)?;
                let (_, tail) =
                    quark_ml::corpus::hold_out(train, vec![], quark_ml::corpus::HELD_OUT);
                held_out.extend(tail);
            } else {
                held_out.extend(validation);
            }
        }
        let mut cases = Vec::new();
        for dataset in LINEAGE
            .datasets_of_kind(&self.db, DatasetKind::Eval)
            .await
            .map_err(HandlerError::transient)?
            .iter()
            .rev()
        {
            for split in [Some(&dataset.train), dataset.validation.as_ref()]
                .into_iter()
                .flatten()
            {
                for record in documents(split)? {
                    match Case::parse(&record) {
                        Ok(case) => cases.push(case),
                        Err(why) => {
                            tracing::warn!(dataset = %dataset.dataset_id, %why, "evaluation record skipped")
                        }
                    }
                }
            }
        }
        cases.truncate(MAX_CASES);
        // Earlier feedback must not be forgotten; the feedback that caused the candidate
        // must be learnt.
        let (mut learnt, mut taught) = (Vec::new(), Vec::new());
        for dataset in LINEAGE
            .datasets_of_kind(&self.db, DatasetKind::Sft)
            .await
            .map_err(HandlerError::transient)?
        {
            let into = match candidate.dataset_ids.contains(&dataset.dataset_id) {
                true => &mut taught,
                false => &mut learnt,
            };
            for split in [Some(&dataset.train), dataset.validation.as_ref()]
                .into_iter()
                .flatten()
            {
                for record in documents(split)? {
                    into.extend(quark_ml::chat::parse_record(&record).ok());
                }
            }
        }
        learnt.truncate(MAX_CASES);
        taught.truncate(MAX_CASES);
        Ok(Suite {
            held_out,
            learnt,
            taught,
            cases,
            red_team: tokio::task::block_in_place(|| self.red_team.get()),
            max_new_tokens: self.settings.max_new_tokens,
            windows: self.settings.validation_windows,
        })
    }

    /// Measures a model on `suite`; the champion's measurement also holds the word-order
    /// gain of the corrections (the candidate's would say only that it learnt them).
    async fn measure(
        &self,
        model_id: Id,
        checkpoint: &Artifact,
        suite: &Suite,
        role: Role,
    ) -> Result<Measurement, HandlerError> {
        let dir = self
            .store
            .get_dir(checkpoint, &self.models.join(model_id.to_string()))
            .await
            .map_err(HandlerError::transient)?;
        tokio::task::block_in_place(|| {
            let (gpt, tokenizer) = checkpoint::load(&dir, self.device)?;
            let work = dir.with_extension("eval");
            std::fs::create_dir_all(&work).map_err(|e| quark_ml::MlError::Data(e.to_string()))?;
            let measured = suite.measure(&gpt, &tokenizer, &work);
            let _ = std::fs::remove_dir_all(&work);
            let mut measured = measured?;
            if role == Role::Champion {
                measured.metrics.extend(
                    suite
                        .order_gain(&gpt, &tokenizer)?
                        .map(|g| (ORDER_GAIN.to_string(), g)),
                );
            }
            Ok::<_, quark_ml::MlError>(measured)
        })
        .map_err(HandlerError::permanent)
    }

    async fn evaluate(&self, candidate: &ModelTrained) -> Result<Event, HandlerError> {
        if let Some(choice) = candidate.choice.as_ref().filter(|c| !c.fits_gate) {
            info!(model = %candidate.model_id, step = choice.step, "no checkpoint of the run fits the gate's limits: rejected without measuring");
            return Ok(unfit(candidate, choice));
        }
        let champion = LINEAGE
            .champion_promotion(&self.db)
            .await
            .map_err(HandlerError::transient)?
            .map(|p| p.model_id)
            .filter(|id| *id != candidate.model_id);
        let baseline = match champion {
            Some(id) => Some(
                LINEAGE
                    .model(&self.db, id)
                    .await
                    .map_err(HandlerError::transient)?
                    .ok_or_else(|| not_known(id))?,
            ),
            None => None,
        };
        let suite = self.suite(candidate).await?;
        let mut measured = self
            .measure(
                candidate.model_id,
                &candidate.checkpoint,
                &suite,
                Role::Candidate,
            )
            .await?;
        let (mut base, mut judge) = (None, None);
        if let Some(b) = &baseline {
            let champion = self
                .measure(b.model_id, &b.checkpoint, &suite, Role::Champion)
                .await?;
            judge = reward_model(&self.db, b.model_id).await?;
            if let Some(judge) = &judge {
                let (models, device) = (&self.models, self.device);
                let rate =
                    win_rate(&self.store, models, device, judge, &measured, &champion).await?;
                measured.metrics.extend(rate);
            }
            base = Some(champion);
        }
        let checks = gate(&self.settings, &measured, base.as_ref());
        let passed = checks.iter().all(|c| c.passed);
        let decision = if passed { "passed" } else { "regressed" };
        metrics::counter!("quark_gate_decisions_total", "decision" => decision).increment(1);
        info!(model = %candidate.model_id, baseline = ?champion, passed, metrics = ?measured.metrics, "evaluated");
        let report = serde_json::json!({
            "model_id": candidate.model_id,
            "baseline_model_id": champion,
            "reward_model_id": judge.map(|j| j.model_id),
            "passed": passed,
            "checks": checks,
            "candidate": measured,
            "baseline": base,
        });
        let report = self
            .store
            .put(&serde_json::to_vec_pretty(&report).map_err(HandlerError::permanent)?)
            .await
            .map_err(HandlerError::transient)?;
        let metrics: HashMap<String, f64> = measured.metrics.into_iter().collect();
        let evaluation_id = Id::derived(candidate.header.event_id, "evaluation");
        let header = |slot| EventHeader::caused_by(&candidate.header, NAME, slot);
        Ok(if passed {
            Event::EvalCompleted(EvalCompleted {
                header: header("completed"),
                evaluation_id,
                model_id: candidate.model_id,
                baseline_model_id: champion,
                metrics,
                checks,
                report,
                source: Some(RegressionSource::OfflineGate),
            })
        } else {
            Event::EvalRegressed(EvalRegressed {
                header: header("regressed"),
                evaluation_id,
                model_id: candidate.model_id,
                baseline_model_id: champion,
                source: RegressionSource::OfflineGate,
                metrics,
                regressions: checks.into_iter().filter(|c| !c.passed).collect(),
                report: Some(report),
            })
        })
    }
}

fn not_known(id: Id) -> HandlerError {
    HandlerError::Transient(format!("model {id} is not known here yet"))
}

/// The verdict on a candidate whose trainer found no checkpoint inside the gate's limits:
/// the trainer's own failed checks, against the model it started from.
fn unfit(candidate: &ModelTrained, choice: &CheckpointChoice) -> Event {
    Event::EvalRegressed(EvalRegressed {
        header: EventHeader::caused_by(&candidate.header, NAME, "regressed"),
        evaluation_id: Id::derived(candidate.header.event_id, "evaluation"),
        model_id: candidate.model_id,
        baseline_model_id: candidate.parent_model_id,
        source: RegressionSource::OfflineGate,
        metrics: candidate.metrics.clone(),
        regressions: choice
            .checks
            .iter()
            .filter(|c| !c.passed)
            .cloned()
            .collect(),
        report: None,
    })
}

#[async_trait]
impl Handler for EvaluatorService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::ModelTrained]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        let Event::ModelTrained(candidate) = event else {
            return Ok(vec![]);
        };
        if candidate.run_kind == RunKind::Reward {
            // A reward model scores policies; it is not one, and never becomes the champion.
            // Held until the projection knows it: the policy trained after it, on its
            // partition, is then gated by it.
            if LINEAGE
                .model(&self.db, candidate.model_id)
                .await
                .map_err(HandlerError::transient)?
                .is_none()
            {
                return Err(not_known(candidate.model_id));
            }
            info!(model = %candidate.model_id, accuracy = ?candidate.metrics.get("heldout_rewards_accuracy"), "a reward model: not a candidate policy");
            return Ok(vec![]);
        }
        Ok(vec![self.evaluate(candidate).await?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::check;
    use quark_events::GateRule;

    #[test]
    fn a_run_with_no_checkpoint_inside_the_limits_is_rejected_on_the_trainers_checks() {
        let Event::ModelTrained(mut trained) =
            quark_events::samples::sample(EventKind::ModelTrained, "trainer")
        else {
            unreachable!()
        };
        let failing = check(
            "perplexity",
            GateRule::MaxRelativeIncrease,
            Some(10.0),
            11.0,
            0.015,
        );
        let passing = check(
            "reply_loss",
            GateRule::MaxRelativeIncrease,
            Some(2.0),
            2.0,
            0.02,
        );
        trained.choice = Some(CheckpointChoice {
            step: 60,
            fits_gate: false,
            checks: vec![failing.clone(), passing],
        });
        let Event::EvalRegressed(r) = unfit(&trained, trained.choice.as_ref().unwrap()) else {
            panic!("an unfit run is a regression")
        };
        assert_eq!(r.regressions, vec![failing]);
        assert_eq!(r.model_id, trained.model_id);
        assert_eq!(r.baseline_model_id, trained.parent_model_id);
        assert_eq!(r.source, RegressionSource::OfflineGate);
        assert_eq!(r.header.causation_id, Some(trained.header.event_id));
        assert!(r.report.is_none(), "nothing was measured");
    }

    #[test]
    fn evaluation_records_parse_into_cases() {
        assert_eq!(
            Case::parse(r#"{"prompt": "Capital of France?", "response": "Paris"}"#).unwrap(),
            Case::Answer {
                prompt: "Capital of France?".into(),
                reference: "Paris".into()
            }
        );
        assert!(matches!(
            Case::parse(r#"{"task": "summarization", "messages": [{"role": "user", "content": "long text"}, {"role": "assistant", "content": "short"}]}"#).unwrap(),
            Case::Summary { .. }
        ));
        assert_eq!(
            Case::parse(r#"{"prompt": "hi", "rejected": "go away"}"#).unwrap(),
            Case::Avoid {
                prompt: "hi".into(),
                rejected: "go away".into()
            }
        );
        assert!(Case::parse("{}").is_err());
        assert!(Case::parse(r#"{"messages": [{"role": "assistant", "content": "x"}]}"#).is_err());
    }
}
