//! Serving as the gateway reports it on the bus: requests, latency and tokens per model and
//! route (response.served), errors per model (telemetry.reported) and the feedback each model
//! drew (feedback.received).

use quark_events::{FeedbackReceived, ResponseServed, TelemetryReported};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// How many of the latest latencies the percentiles are taken over.
const LATENCIES: usize = 1_000;
/// Routes and models the page shows, the busiest first.
const SHOWN: usize = 50;

#[derive(Default)]
struct Route {
    requests: u64,
    streamed: u64,
    prompt_tokens: i64,
    completion_tokens: i64,
    /// Seconds spent on the requests that generated tokens (tokens/s divides by it).
    generating_s: f64,
    latencies_ms: VecDeque<f64>,
}

#[derive(Default)]
struct Reported {
    requests: i64,
    errors: i64,
    blocked: i64,
}

#[derive(Default)]
struct Feedback {
    count: u64,
    negative: u64,
    rating_sum: i64,
}

#[derive(Default)]
pub struct Serving {
    routes: BTreeMap<(String, String), Route>,
    reported: BTreeMap<String, Reported>,
    feedback: BTreeMap<String, Feedback>,
}

/// One model on one route.
#[derive(Debug, Serialize)]
pub struct RouteNow {
    pub model_id: String,
    pub route: String,
    pub requests: u64,
    pub streamed: u64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

/// One model: what its instances reported, and its feedback.
#[derive(Debug, Serialize)]
pub struct ModelNow {
    pub model_id: String,
    pub reported_requests: i64,
    pub errors: i64,
    pub blocked: i64,
    pub feedback: u64,
    pub negative_feedback: u64,
    pub mean_rating: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ServingNow {
    pub routes: Vec<RouteNow>,
    pub models: Vec<ModelNow>,
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[((last as f64) * q).round() as usize])
}

impl Serving {
    pub fn served(&mut self, e: &ResponseServed) {
        let route = self
            .routes
            .entry((e.model_id.to_string(), e.route.clone()))
            .or_default();
        route.requests += 1;
        route.streamed += u64::from(e.streamed);
        route.prompt_tokens += e.prompt_tokens;
        route.completion_tokens += e.completion_tokens;
        if e.completion_tokens > 0 {
            route.generating_s += e.latency_ms / 1e3;
        }
        if route.latencies_ms.len() == LATENCIES {
            route.latencies_ms.pop_front();
        }
        route.latencies_ms.push_back(e.latency_ms);
    }

    pub fn reported(&mut self, e: &TelemetryReported) {
        let model = self.reported.entry(e.model_id.to_string()).or_default();
        model.requests += e.requests;
        model.errors += e.errors;
        model.blocked += e.blocked;
    }

    pub fn feedback(&mut self, e: &FeedbackReceived) {
        let model = self.feedback.entry(e.model_id.clone()).or_default();
        model.count += 1;
        model.negative += u64::from(e.is_negative());
        model.rating_sum += i64::from(e.rating);
    }

    pub fn now(&self) -> ServingNow {
        let mut busiest: Vec<_> = self.routes.iter().collect();
        busiest.sort_by_key(|(_, r)| std::cmp::Reverse(r.requests));
        let routes = busiest
            .into_iter()
            .take(SHOWN)
            .map(|((model_id, route), r)| {
                let mut sorted: Vec<f64> = r.latencies_ms.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                RouteNow {
                    model_id: model_id.clone(),
                    route: route.clone(),
                    requests: r.requests,
                    streamed: r.streamed,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    latency_p50_ms: percentile(&sorted, 0.5),
                    latency_p95_ms: percentile(&sorted, 0.95),
                    latency_p99_ms: percentile(&sorted, 0.99),
                    tokens_per_s: (r.generating_s > 0.0)
                        .then(|| r.completion_tokens as f64 / r.generating_s),
                }
            })
            .collect();
        let mut ids: Vec<&String> = self.reported.keys().chain(self.feedback.keys()).collect();
        ids.sort();
        ids.dedup();
        let traffic = |id: &String| {
            let reported = self.reported.get(id).map_or(0, |r| r.requests);
            reported + self.feedback.get(id).map_or(0, |f| f.count as i64)
        };
        ids.sort_by_key(|id| std::cmp::Reverse(traffic(id)));
        let models = ids
            .into_iter()
            .take(SHOWN)
            .map(|id| {
                let reported = self.reported.get(id);
                let feedback = self.feedback.get(id);
                ModelNow {
                    model_id: id.clone(),
                    reported_requests: reported.map_or(0, |r| r.requests),
                    errors: reported.map_or(0, |r| r.errors),
                    blocked: reported.map_or(0, |r| r.blocked),
                    feedback: feedback.map_or(0, |f| f.count),
                    negative_feedback: feedback.map_or(0, |f| f.negative),
                    mean_rating: feedback
                        .filter(|f| f.count > 0)
                        .map(|f| f.rating_sum as f64 / f.count as f64),
                }
            })
            .collect();
        ServingNow { routes, models }
    }
}
