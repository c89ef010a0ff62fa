//! The gateway's serving metrics under vLLM's names (`quark_` where vLLM has `vllm:`), one
//! series a model; the gateway's `GET /metrics` shows them with every other metric of the
//! process (in `quark up`, every service's).

use crate::Served;
use crate::moderation::Answered;
use metrics::{counter, gauge, histogram};
use std::time::Instant;

/// When a request started and when its first piece of text was decided.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub started: Instant,
    pub first_text: Option<Instant>,
}

/// The batch's running and waiting requests of `served`, now.
pub(crate) fn load(served: &Served) {
    let model = served.model_id.to_string();
    let load = served.engine.load();
    gauge!("quark_num_requests_running", "model_name" => model.clone()).set(load.running as f64);
    gauge!("quark_num_requests_waiting", "model_name" => model).set(load.waiting as f64);
}

/// Records one request that has ended: its latencies (time to first token, each token after
/// it, end to end), its tokens, and whether it failed.
pub(crate) fn request(served: &Served, timing: Timing, answered: Option<&Answered>) {
    let model = served.model_id.to_string();
    let ended = Instant::now();
    let status = if answered.is_some() { "ok" } else { "error" };
    counter!("quark_requests_total", "model_name" => model.clone(), "status" => status)
        .increment(1);
    histogram!("quark_e2e_request_latency_seconds", "model_name" => model.clone())
        .record((ended - timing.started).as_secs_f64());
    load(served);
    let Some(answered) = answered else { return };
    let g = &answered.generation;
    counter!("quark_prompt_tokens_total", "model_name" => model.clone())
        .increment(g.prompt_tokens as u64);
    counter!("quark_generation_tokens_total", "model_name" => model.clone())
        .increment(g.tokens.len() as u64);
    let Some(first) = timing.first_text else {
        return;
    };
    histogram!("quark_time_to_first_token_seconds", "model_name" => model.clone())
        .record((first - timing.started).as_secs_f64());
    // Each token after the first waited, on average, this long (vLLM records one a token).
    if let Some(after) = g.tokens.len().checked_sub(1).filter(|n| *n > 0) {
        let each = (ended - first).as_secs_f64() / after as f64;
        histogram!("quark_inter_token_latency_seconds", "model_name" => model)
            .record_many(each, after);
    }
}
