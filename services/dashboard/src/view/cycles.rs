//! The loop now: each learning cycle (one correlation id) and the furthest step it reached —
//! collected → prepared → trained → evaluated → promoted — and the feedback still waiting to
//! start one.

use quark_events::{Event, EventKind};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many cycles the page shows, the latest first.
const SHOWN: usize = 10;
/// How many chains' first events are remembered (to name what started a cycle).
const ROOTS: usize = 100_000;

/// The steps of a cycle, in order.
pub const STEPS: [&str; 5] = ["collected", "prepared", "trained", "evaluated", "promoted"];

fn step(kind: EventKind) -> Option<&'static str> {
    Some(match kind {
        EventKind::FeedbackReceived | EventKind::DataCollected | EventKind::RetrainRequested => {
            "collected"
        }
        EventKind::DatasetPrepared | EventKind::TokenizerTrained => "prepared",
        EventKind::ModelTrained => "trained",
        EventKind::EvalCompleted | EventKind::EvalRegressed => "evaluated",
        EventKind::ModelPromoted => "promoted",
        _ => return None,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Cycle {
    pub correlation_id: String,
    /// The event type that started it, when the dashboard saw it.
    pub cause: Option<String>,
    /// Step → when it was first reached.
    pub steps: BTreeMap<&'static str, i64>,
    /// The furthest step reached.
    pub at: &'static str,
    pub model_id: Option<String>,
    pub last_ms: i64,
}

#[derive(Default)]
pub struct Cycles {
    /// Cycles past collection.
    cycles: HashMap<String, Cycle>,
    /// Chain → its first event's type and time.
    roots: HashMap<String, (String, i64)>,
    root_order: VecDeque<String>,
    feedback: u64,
    last_feedback_ms: Option<i64>,
    /// Feedback since the last dataset was prepared.
    waiting: u64,
}

#[derive(Debug, Serialize)]
pub struct LoopNow {
    pub steps: [&'static str; 5],
    pub cycles: Vec<Cycle>,
    pub feedback: u64,
    pub last_feedback_ms: Option<i64>,
    pub feedback_waiting: u64,
}

impl Cycles {
    pub fn saw(&mut self, event: &Event) {
        let header = event.header();
        let correlation = header.correlation_id.to_string();
        let at = header.occurred_at.0;
        if header.causation_id.is_none() && !self.roots.contains_key(&correlation) {
            if self.root_order.len() == ROOTS
                && let Some(old) = self.root_order.pop_front()
            {
                self.roots.remove(&old);
            }
            let kind = event.kind().topic().to_string();
            // Catching up, the tail reads topics side by side: a later step can come first.
            if let Some(cycle) = self.cycles.get_mut(&correlation) {
                cycle.cause.get_or_insert(kind.clone());
                cycle.steps.entry("collected").or_insert(at);
            }
            self.roots.insert(correlation.clone(), (kind, at));
            self.root_order.push_back(correlation.clone());
        }
        match event {
            Event::FeedbackReceived(_) => {
                self.feedback += 1;
                self.waiting += 1;
                self.last_feedback_ms = Some(at.max(self.last_feedback_ms.unwrap_or(at)));
            }
            Event::DatasetPrepared(_) => self.waiting = 0,
            _ => {}
        }
        let Some(step) = step(event.kind()).filter(|s| *s != "collected") else {
            return;
        };
        let root = self.roots.get(&correlation).cloned();
        let cycle = self
            .cycles
            .entry(correlation.clone())
            .or_insert_with(|| Cycle {
                correlation_id: correlation,
                cause: root.as_ref().map(|r| r.0.clone()),
                steps: BTreeMap::new(),
                at: "collected",
                model_id: None,
                last_ms: at,
            });
        if let Some((_, started)) = root {
            cycle.steps.entry("collected").or_insert(started);
        }
        cycle.steps.entry(step).or_insert(at);
        cycle.last_ms = cycle.last_ms.max(at);
        let rank = |s: &str| STEPS.iter().position(|x| *x == s);
        if rank(step) > rank(cycle.at) {
            cycle.at = step;
        }
        if let Event::ModelTrained(e) = event {
            cycle.model_id = Some(e.model_id.to_string());
        }
    }

    /// The event type that started the chain `correlation`, when it was seen.
    pub fn cause(&self, correlation: &str) -> Option<String> {
        self.roots.get(correlation).map(|r| r.0.clone())
    }

    pub fn now(&self) -> LoopNow {
        let mut cycles: Vec<Cycle> = self.cycles.values().cloned().collect();
        cycles.sort_by_key(|c| std::cmp::Reverse(c.last_ms));
        cycles.truncate(SHOWN);
        LoopNow {
            steps: STEPS,
            cycles,
            feedback: self.feedback,
            last_feedback_ms: self.last_feedback_ms,
            feedback_waiting: self.waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_events::samples::sample;
    use quark_events::{EventHeader, EventKind};

    #[test]
    fn a_cycle_learns_what_started_it_even_when_the_start_is_read_late() {
        let mut root = sample(EventKind::DataCollected, "collect");
        let Event::DataCollected(collected) = &mut root else {
            unreachable!()
        };
        collected.header = EventHeader::root("collect");
        let mut prepared = sample(EventKind::DatasetPrepared, "curator");
        let Event::DatasetPrepared(p) = &mut prepared else {
            unreachable!()
        };
        p.header = EventHeader::caused_by(&collected.header, "curator", "prepared");
        let mut cycles = Cycles::default();
        cycles.saw(&prepared);
        assert_eq!(cycles.now().cycles[0].cause, None);
        cycles.saw(&root);
        let cycle = &cycles.now().cycles[0];
        assert_eq!(cycle.cause.as_deref(), Some("data.collected"));
        assert_eq!(
            (cycle.at, cycle.steps.keys().copied().collect::<Vec<_>>()),
            ("prepared", vec!["collected", "prepared"])
        );
    }
}
