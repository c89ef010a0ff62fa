//! Topics over time: each tick's size of every topic and lag of every consumer, so the page
//! can show the rate and the lag's trend, not only the numbers now.

use quark_events::bus::TopicState;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Ticks kept (at the default one a second, ten minutes).
const KEPT: usize = 600;
/// Ticks sent to the page for each series.
const SENT: usize = 120;
/// The rate is taken over this many ticks.
const RATE_OVER: usize = 10;

struct Sample {
    at_ms: i64,
    /// Topic → messages.
    messages: BTreeMap<String, i64>,
    /// Topic → consumer → lag.
    lags: BTreeMap<String, BTreeMap<String, i64>>,
}

#[derive(Default)]
pub struct Topics {
    samples: VecDeque<Sample>,
}

/// A topic as the page shows it.
#[derive(Debug, Serialize)]
pub struct TopicNow {
    pub topic: String,
    pub messages: i64,
    /// Messages a second over the last few ticks.
    pub rate: f64,
    /// Consumer → messages it has not processed yet.
    pub lag: BTreeMap<String, i64>,
    /// The latest ticks' sizes, oldest first.
    pub messages_series: Vec<i64>,
    /// Consumer → the latest ticks' lags (0 before it showed up), oldest first.
    pub lag_series: BTreeMap<String, Vec<i64>>,
    pub dead_letters: usize,
}

impl Topics {
    pub fn sample(
        &mut self,
        at_ms: i64,
        states: &[TopicState],
        positions: &[(String, String, i32, i64)],
    ) {
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms,
            messages: states
                .iter()
                .map(|s| (s.topic.clone(), s.messages()))
                .collect(),
            lags: states
                .iter()
                .map(|s| (s.topic.clone(), s.lags(positions)))
                .collect(),
        });
    }

    pub fn last_ms(&self) -> i64 {
        self.samples.back().map_or(0, |s| s.at_ms)
    }

    /// Every topic of the latest tick; `dead` counts the letters waiting per source topic.
    pub fn now(&self, dead: &BTreeMap<&str, usize>) -> Vec<TopicNow> {
        let Some(last) = self.samples.back() else {
            return Vec::new();
        };
        let recent: Vec<&Sample> = self.samples.iter().rev().take(SENT).rev().collect();
        let since = &self.samples[self.samples.len().saturating_sub(RATE_OVER + 1)];
        let seconds = (last.at_ms - since.at_ms) as f64 / 1e3;
        last.messages
            .iter()
            .map(|(topic, &messages)| {
                let before = since.messages.get(topic).copied().unwrap_or(messages);
                let lag = last.lags.get(topic).cloned().unwrap_or_default();
                let lag_series = lag
                    .keys()
                    .map(|consumer| {
                        let series = recent
                            .iter()
                            .map(|s| s.lags.get(topic).and_then(|l| l.get(consumer)).copied())
                            .map(|l| l.unwrap_or(0))
                            .collect();
                        (consumer.clone(), series)
                    })
                    .collect();
                TopicNow {
                    topic: topic.clone(),
                    messages,
                    rate: if seconds > 0.0 {
                        (messages - before).max(0) as f64 / seconds
                    } else {
                        0.0
                    },
                    lag,
                    messages_series: recent
                        .iter()
                        .map(|s| s.messages.get(topic).copied().unwrap_or(0))
                        .collect(),
                    lag_series,
                    dead_letters: dead.get(topic.as_str()).copied().unwrap_or(0),
                }
            })
            .collect()
    }
}
