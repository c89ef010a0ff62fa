//! Training jobs as they report themselves (training.progressed): step, loss curve and speed,
//! until the model.trained they cause says they are done.

use quark_events::{ModelTrained, TrainingProgressed};
use serde::Serialize;
use std::collections::BTreeMap;

/// Points of a loss curve kept per job (every other one is dropped when full).
const POINTS: usize = 400;
/// Finished jobs the page still shows.
const FINISHED: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub job_id: String,
    pub correlation_id: String,
    pub run_kind: String,
    pub device: String,
    pub step: i64,
    pub max_steps: i64,
    pub tokens_per_s: Option<f64>,
    /// (step, training loss), oldest first.
    pub loss: Vec<(i64, f64)>,
    /// (step, validation loss).
    pub val_loss: Vec<(i64, f64)>,
    pub started_ms: i64,
    pub last_ms: i64,
    /// The model it made, once done.
    pub model_id: Option<String>,
}

#[derive(Default)]
pub struct Jobs {
    jobs: BTreeMap<String, Job>,
}

fn keep(curve: &mut Vec<(i64, f64)>, point: (i64, f64)) {
    if curve.last().is_some_and(|p| p.0 >= point.0) {
        return;
    }
    if curve.len() == POINTS {
        let mut i = 0_usize;
        curve.retain(|_| {
            i += 1;
            i.is_multiple_of(2)
        });
    }
    curve.push(point);
}

impl Jobs {
    pub fn progressed(&mut self, e: &TrainingProgressed) {
        let at = e.header.occurred_at.0;
        let job = self
            .jobs
            .entry(e.job_id.to_string())
            .or_insert_with(|| Job {
                job_id: e.job_id.to_string(),
                correlation_id: e.header.correlation_id.to_string(),
                run_kind: super::models::spelled(e.run_kind),
                device: e.device.clone(),
                step: 0,
                max_steps: e.max_steps,
                tokens_per_s: None,
                loss: Vec::new(),
                val_loss: Vec::new(),
                started_ms: at,
                last_ms: at,
                model_id: None,
            });
        job.step = job.step.max(e.step);
        job.max_steps = e.max_steps;
        job.last_ms = job.last_ms.max(at);
        job.tokens_per_s = e.tokens_per_s.or(job.tokens_per_s);
        if let Some(loss) = e.loss {
            keep(&mut job.loss, (e.step, loss));
        }
        if let Some(loss) = e.val_loss {
            keep(&mut job.val_loss, (e.step, loss));
        }
    }

    pub fn trained(&mut self, e: &ModelTrained) {
        let Some(cause) = e.header.causation_id else {
            return;
        };
        if let Some(job) = self.jobs.get_mut(&cause.to_string()) {
            job.model_id = Some(e.model_id.to_string());
        }
    }

    /// The jobs running and the latest finished, the latest first.
    pub fn now(&self) -> Vec<Job> {
        let mut jobs: Vec<&Job> = self.jobs.values().collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.last_ms));
        let running = jobs.iter().filter(|j| j.model_id.is_none());
        let finished = jobs.iter().filter(|j| j.model_id.is_some()).take(FINISHED);
        running.chain(finished).map(|j| (*j).clone()).collect()
    }
}
