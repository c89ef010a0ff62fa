//! The models as the bus tells them: every version trained (lineage, training metrics), every
//! evaluation (metrics and the gate's checks) and every alias move with why and by whom. The
//! page works out the aliases at any moment from the moves (now, and on its time slider).

use quark_events::{EvalCompleted, EvalRegressed, GateCheck, ModelPromoted, ModelTrained};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A version: what it was made from and what it scored.
#[derive(Clone, Debug, Serialize)]
pub struct Version {
    pub model_id: String,
    pub trained_at_ms: i64,
    pub run_kind: String,
    pub parent_model_id: Option<String>,
    pub dataset_ids: Vec<String>,
    pub tokenizer_id: String,
    /// The learning cycle that made it (`quark trace` and the message browser follow it).
    pub correlation_id: String,
    /// The event type that started that cycle (feedback, a retrain request, collected data),
    /// filled in from the cycles when the page asks.
    pub cause: Option<String>,
    pub training: BTreeMap<String, f64>,
    /// Its latest evaluation's metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// A gate's verdict on a version.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub evaluation_id: String,
    pub model_id: String,
    pub baseline_model_id: Option<String>,
    pub at_ms: i64,
    /// `completed` (the gate's reading of a candidate) or `regressed` (a served model that
    /// got worse, which rolls it back).
    pub outcome: &'static str,
    pub metrics: BTreeMap<String, f64>,
    pub checks: Vec<GateCheck>,
}

/// An alias move, with the evaluation behind it when there was one.
#[derive(Clone, Debug, Serialize)]
pub struct Move {
    pub alias: String,
    pub model_id: String,
    pub previous_model_id: Option<String>,
    /// As the event spells it: gate_passed, rollback, manual, trained.
    pub reason: String,
    pub at_ms: i64,
    pub operator: Option<String>,
    pub note: Option<String>,
    pub evaluation: Option<Evaluation>,
}

#[derive(Default)]
pub struct Models {
    versions: Vec<Version>,
    evaluations: HashMap<String, Evaluation>,
    moves: Vec<ModelPromoted>,
}

/// What the page gets.
#[derive(Debug, Serialize)]
pub struct ModelsNow {
    /// Oldest first.
    pub versions: Vec<Version>,
    /// Oldest first; the aliases now are the last move of each.
    pub moves: Vec<Move>,
}

fn sorted(metrics: &HashMap<String, f64>) -> BTreeMap<String, f64> {
    metrics.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// An enum as the event spells it (`gate_passed`, `sft`).
pub(super) fn spelled(value: impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Models {
    pub fn trained(&mut self, e: &ModelTrained) {
        let id = e.model_id.to_string();
        if self.versions.iter().any(|v| v.model_id == id) {
            return;
        }
        self.versions.push(Version {
            model_id: id,
            trained_at_ms: e.header.occurred_at.0,
            run_kind: spelled(e.run_kind),
            parent_model_id: e.parent_model_id.map(|p| p.to_string()),
            dataset_ids: e.dataset_ids.iter().map(ToString::to_string).collect(),
            tokenizer_id: e.tokenizer_id.to_string(),
            correlation_id: e.header.correlation_id.to_string(),
            cause: None,
            training: sorted(&e.metrics),
            metrics: BTreeMap::new(),
        });
        self.versions.sort_by_key(|v| v.trained_at_ms);
    }

    pub fn completed(&mut self, e: &EvalCompleted) {
        self.evaluated(Evaluation {
            evaluation_id: e.evaluation_id.to_string(),
            model_id: e.model_id.to_string(),
            baseline_model_id: e.baseline_model_id.map(|b| b.to_string()),
            at_ms: e.header.occurred_at.0,
            outcome: "completed",
            metrics: sorted(&e.metrics),
            checks: e.checks.clone(),
        });
    }

    pub fn regressed(&mut self, e: &EvalRegressed) {
        self.evaluated(Evaluation {
            evaluation_id: e.evaluation_id.to_string(),
            model_id: e.model_id.to_string(),
            baseline_model_id: e.baseline_model_id.map(|b| b.to_string()),
            at_ms: e.header.occurred_at.0,
            outcome: "regressed",
            metrics: sorted(&e.metrics),
            checks: e.regressions.clone(),
        });
    }

    fn evaluated(&mut self, evaluation: Evaluation) {
        if evaluation.outcome == "completed"
            && let Some(v) = self
                .versions
                .iter_mut()
                .find(|v| v.model_id == evaluation.model_id)
        {
            v.metrics = evaluation.metrics.clone();
        }
        self.evaluations
            .insert(evaluation.evaluation_id.clone(), evaluation);
    }

    pub fn promoted(&mut self, e: &ModelPromoted) {
        if self
            .moves
            .iter()
            .any(|m| m.header.event_id == e.header.event_id)
        {
            return;
        }
        self.moves.push(e.clone());
        // Stable: moves of one moment keep the order the registry sent them in.
        self.moves.sort_by_key(|p| p.header.occurred_at.0);
    }

    /// Every version and every move, for the page.
    pub fn now(&self) -> ModelsNow {
        ModelsNow {
            versions: self.versions.clone(),
            moves: self.moves.iter().map(|p| self.explained(p)).collect(),
        }
    }

    fn explained(&self, p: &ModelPromoted) -> Move {
        Move {
            alias: p.alias_key(),
            model_id: p.model_id.to_string(),
            previous_model_id: p.previous_model_id.map(|m| m.to_string()),
            reason: spelled(p.reason),
            at_ms: p.header.occurred_at.0,
            operator: p.operator.clone(),
            note: p.note.clone(),
            evaluation: p
                .evaluation_id
                .and_then(|id| self.evaluations.get(&id.to_string()).cloned()),
        }
    }
}
