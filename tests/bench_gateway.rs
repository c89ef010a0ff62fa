//! Load on an OpenAI-compatible server (Quark's gateway, or a peer): `REQUESTS` streamed
//! completions from `CONCURRENCY` clients, each request a prompt of the prompts file in turn.
//! Prints one JSON line: requests/s, generated tokens/s (the servers' own `usage`), and
//! percentiles of the time to the first token, between tokens and to the end.
//!
//!   quark-bench-gateway URL MODEL PROMPTS_FILE CONCURRENCY REQUESTS MAX_TOKENS
//!
//! PROMPTS_FILE holds one prompt per line. Every request asks for exactly MAX_TOKENS
//! (`ignore_eos`-like: `stop` empty, temperature 0.8, seed per request), streamed with
//! `stream_options.include_usage`.

use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One request's timings (seconds) and the tokens its server says it generated.
#[derive(Default)]
struct Timed {
    first: Option<f64>,
    gaps: Vec<f64>,
    total: f64,
    tokens: usize,
    ok: bool,
}

async fn one(client: &reqwest::Client, url: &str, body: Value) -> Timed {
    let mut timed = Timed::default();
    let sent = Instant::now();
    let Ok(response) = client
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .await
    else {
        return timed;
    };
    if !response.status().is_success() {
        return timed;
    }
    let mut stream = response.bytes_stream();
    let (mut buffer, mut last) = (String::new(), None::<Instant>);
    while let Some(Ok(bytes)) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                timed.ok = true;
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                timed.tokens = n as usize;
            }
            let text = chunk["choices"][0]["text"].as_str().unwrap_or("");
            if !text.is_empty() {
                let now = Instant::now();
                match last {
                    None => timed.first = Some((now - sent).as_secs_f64()),
                    Some(before) => timed.gaps.push((now - before).as_secs_f64()),
                }
                last = Some(now);
            }
        }
    }
    timed.total = sent.elapsed().as_secs_f64();
    timed
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, model, prompts, concurrency, requests, max_tokens] = &args[..] else {
        panic!("usage: quark-bench-gateway URL MODEL PROMPTS_FILE CONCURRENCY REQUESTS MAX_TOKENS");
    };
    let prompts: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(prompts)
            .expect("PROMPTS_FILE")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
    );
    let (concurrency, requests, max_tokens): (usize, usize, usize) = (
        concurrency.parse().expect("CONCURRENCY"),
        requests.parse().expect("REQUESTS"),
        max_tokens.parse().expect("MAX_TOKENS"),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, url, model, prompts) = (
                client.clone(),
                next.clone(),
                url.clone(),
                model.clone(),
                prompts.clone(),
            );
            tokio::spawn(async move {
                let mut done = vec![];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return done;
                    }
                    let body = json!({
                        "model": model,
                        "prompt": prompts[i % prompts.len()],
                        "max_tokens": max_tokens,
                        "temperature": 0.8,
                        "seed": i,
                        "stream": true,
                        "stream_options": {"include_usage": true},
                    });
                    done.push(one(&client, &url, body).await);
                }
            })
        })
        .collect();
    let mut all = vec![];
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok: Vec<&Timed> = all.iter().filter(|t| t.ok).collect();
    let tokens: usize = ok.iter().map(|t| t.tokens).sum();
    let mut first: Vec<f64> = ok.iter().filter_map(|t| t.first).collect();
    let mut gaps: Vec<f64> = ok.iter().flat_map(|t| t.gaps.iter().copied()).collect();
    let mut total: Vec<f64> = ok.iter().map(|t| t.total).collect();
    let ms = |v: f64| (v * 1e4).round() / 10.0;
    println!(
        "{}",
        json!({
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "requests": all.len(),
            "errors": all.len() - ok.len(),
            "seconds": elapsed,
            "requests_per_s": ok.len() as f64 / elapsed,
            "tokens_per_s": tokens as f64 / elapsed,
            "tokens": tokens,
            "ttft_ms": {"p50": ms(percentile(&mut first, 0.5)), "p99": ms(percentile(&mut first, 0.99))},
            "itl_ms": {"p50": ms(percentile(&mut gaps, 0.5)), "p99": ms(percentile(&mut gaps, 0.99))},
            "e2e_ms": {"p50": ms(percentile(&mut total, 0.5)), "p99": ms(percentile(&mut total, 0.99))},
        })
    );
}
