//! The gateway's continuous batch, over HTTP on the real broker: 64 concurrent streamed
//! completions, each with its own seed, temperature, stop sequence and length, each return
//! exactly what the same request returns alone, and the batch ran them together. A burst past
//! `gateway.max_in_flight` is turned back with 429 and `Retry-After`, and every request asked
//! again is answered and published once.

use futures::StreamExt;
use quark_e2e::{Cluster, GatewayTables, open, promotion_of};
use quark_events::bus::Publisher;
use quark_ml::data::Windows;
use quark_ml::gpt::{Gpt, GptConfig};
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::shards::{self, Shard};
use quark_ml::tokenizer;
use quark_ml::train::{TrainConfig, Trainer};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

const TEXT: &str = "Now is the winter of our discontent made glorious summer by this sun of York; \
and all the clouds that lour'd upon our house in the deep bosom of the ocean buried. ";

/// A small character model that has learnt the text (peaked distributions, so no two
/// tokens tie to the last bit).
fn trained_model(dir: &Path) -> PathBuf {
    let tok = tokenizer::train_chars(TEXT).unwrap();
    let shard = dir.join("train.tok");
    shards::write(&tok, &[TEXT.repeat(50)], &shard).unwrap();
    let data = Windows::new(Shard::open(&shard).unwrap(), 16, 64, 7).unwrap();
    let config = TrainConfig {
        batch_size: 16,
        grad_accum: 1,
        max_steps: 120,
        schedule: Schedule {
            max_lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 10,
            decay_steps: 120,
        },
        adamw: AdamWConfig::default(),
        grad_clip: 1.0,
        eval_interval: 0,
        eval_windows: None,
        checkpoint_interval: 0,
        log_interval: 50,
        seed: 7,
        kl_weight: 0.0,
        objective: Default::default(),
    };
    let shape = GptConfig {
        vocab_size: tok.get_vocab_size(true) as i64,
        block_size: 64,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        dropout: 0.0,
        layout: Default::default(),
    };
    let model = Gpt::new(shape, tch::Device::Cpu, 7).unwrap();
    let mut run = Trainer::start(model, tok, config, None, &dir.join("run")).unwrap();
    run.run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap()
        .checkpoint
}

/// The 64 requests: prompts, lengths, temperatures, seeds and stops all differ.
fn requests() -> Vec<Value> {
    let prompts = [
        "Now is the",
        "and all the clouds",
        "made glorious",
        "in the deep",
        "of York",
    ];
    (0..64)
        .map(|i: usize| {
            let temperature = [0.0, 0.7, 1.0, 1.3][i % 4];
            let mut body = json!({
                "model": "champion",
                "prompt": prompts[i % prompts.len()],
                "max_tokens": 3 + (i * 5) % 30,
                "temperature": temperature,
                "seed": 100 + i,
                "stream": true,
            });
            if i % 3 == 1 {
                body["stop"] = json!(["the"]);
            }
            if i % 5 == 2 {
                body["top_p"] = json!(0.9);
            }
            body
        })
        .collect()
}

/// A streamed completion's text (its chunks joined) and finish reason.
async fn streamed(http: &reqwest::Client, url: &str, body: &Value) -> (String, String) {
    let response = http
        .post(format!("{url}/v1/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let mut stream = response.bytes_stream();
    let (mut buffer, mut text, mut finish) = (String::new(), String::new(), String::new());
    while let Some(bytes) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data = event.trim().trim_start_matches("data: ");
            if data == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(data).unwrap();
            text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or(""));
            if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
    }
    (text, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_streams_return_what_each_returns_alone() {
    let cluster = Cluster::start().await;
    let checkpoint = tokio::task::block_in_place(|| trained_model(cluster.dir.path()));
    let db = open::<GatewayTables>(cluster.dir.path(), "gateway.db").await;
    let url = cluster.gateway("a", &db, true, None).await;
    let promoted = promotion_of(&cluster.store, &checkpoint).await;
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    publisher.publish(&promoted.clone().into()).await.unwrap();
    cluster.wait_until_serving(&url, promoted.model_id).await;
    let http = reqwest::Client::new();
    let requests = requests();

    let mut alone = vec![];
    for body in &requests {
        alone.push(streamed(&http, &url, body).await);
    }
    let together =
        futures::future::join_all(requests.iter().map(|b| streamed(&http, &url, b))).await;
    let mut stopped = 0;
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "request {i}: {}", requests[i]);
        stopped += (a.1 == "stop") as usize;
    }
    assert!(stopped > 0, "some requests ended at their stop sequence");

    let status = cluster.admin_status(&url).await;
    let peak = status["batch"]["peak_running"].as_u64().unwrap();
    assert!(peak >= 16, "the requests shared decode steps: {status}");
    assert_eq!(status["batch"]["running"], 0);
}

/// What a burst client saw: its answer's request id, and the refusals it got on the way.
struct Burst {
    served: String,
    refused: Vec<(String, Value)>,
}

/// Asks until the answer comes, waiting as long as each 429's `Retry-After` says.
async fn until_served(http: &reqwest::Client, url: &str, body: &Value) -> Burst {
    let mut refused = vec![];
    loop {
        let response = http.post(url).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (id, retry_after) = (header("x-request-id").unwrap(), header("retry-after"));
        // A streamed answer is server-sent events, not JSON.
        let text = response.text().await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        match status {
            200 => {
                return Burst {
                    served: id,
                    refused,
                };
            }
            429 => {
                let wait: u64 = retry_after
                    .expect("a 429 says when to retry")
                    .parse()
                    .unwrap();
                refused.push((id, answer));
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            }
            other => panic!("{other}: {answer}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_past_the_gateways_limit_is_turned_back_with_429_and_loses_nothing() {
    let cluster = Cluster::start().await;
    let db = open::<GatewayTables>(cluster.dir.path(), "gateway.db").await;
    let settings = quark_runtime::config::GatewaySettings {
        instance: "burst".into(),
        max_in_flight: 2,
        ..quark_runtime::Settings::default().gateway
    };
    let url = cluster
        .gateway_with(settings, &db, true, None, |_| {})
        .await;
    let promoted = quark_e2e::promotion(&cluster.store, cluster.dir.path()).await;
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    publisher.publish(&promoted.clone().into()).await.unwrap();
    cluster.wait_until_serving(&url, promoted.model_id).await;

    // 40 clients at once against room for 2: streamed and whole answers alike.
    let http = reqwest::Client::new();
    let endpoint = format!("{url}/v1/completions");
    let bodies: Vec<Value> = (0..40)
        .map(|i| json!({"model": "champion", "prompt": "Now is the", "max_tokens": 48, "stream": i % 2 == 0}))
        .collect();
    let bursts =
        futures::future::join_all(bodies.iter().map(|b| until_served(&http, &endpoint, b))).await;

    let refused: Vec<&(String, Value)> = bursts.iter().flat_map(|b| &b.refused).collect();
    assert!(!refused.is_empty(), "40 at once against room for 2");
    for (_, body) in &refused {
        assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    }
    // Every answer was published once; nothing refused was.
    let served = cluster
        .events(quark_events::EventKind::ResponseServed, bursts.len())
        .await;
    let published: std::collections::BTreeSet<String> = served
        .iter()
        .map(|e| match e {
            quark_events::Event::ResponseServed(r) => r.request_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let answered: std::collections::BTreeSet<String> =
        bursts.iter().map(|b| b.served.clone()).collect();
    assert_eq!(published, answered);
    assert!(refused.iter().all(|(id, _)| !published.contains(id)));
    // And the places are all given back.
    let status = cluster.admin_status(&url).await;
    assert_eq!(status["batch"]["running"], 0, "{status}");
    let again = futures::future::join_all((0..2).map(|_| {
        http.post(&endpoint)
            .json(&json!({"model": "champion", "prompt": "Now", "max_tokens": 4}))
            .send()
    }))
    .await;
    assert!(again.iter().all(|r| r.as_ref().unwrap().status() == 200));
}
