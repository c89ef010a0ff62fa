//! Load on the gateway: concurrent chat completions against a running `quark up`, and the
//! latency percentiles and errors it saw.
//!
//!   quark-bench-gateway [URL] [CONCURRENCY] [REQUESTS] [MAX_TOKENS]
//!
//! Defaults: http://127.0.0.1:8080, 8 clients, 400 requests, 16 tokens each.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let concurrency: usize = args.get(2).map_or(8, |a| a.parse().expect("CONCURRENCY"));
    let requests: usize = args.get(3).map_or(400, |a| a.parse().expect("REQUESTS"));
    let max_tokens: usize = args.get(4).map_or(16, |a| a.parse().expect("MAX_TOKENS"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, url) = (client.clone(), next.clone(), url.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                    let body = serde_json::json!({
                        "model": "champion",
                        "messages": [{"role": "user", "content": "Tell me of the king."}],
                        "max_tokens": max_tokens,
                        "temperature": 0.8,
                    });
                    let sent = Instant::now();
                    let ok = match client
                        .post(format!("{url}/v1/chat/completions"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    errors += usize::from(!ok);
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (l, e) = worker.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies[((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "{} requests, {concurrency} concurrent, {max_tokens} tokens each: {:.1} requests/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, errors {errors}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or(0.0),
    );
}
