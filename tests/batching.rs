//! The gateway's continuous batch, over HTTP on the real broker: 64 concurrent streamed
//! completions, each with its own seed, temperature, stop sequence and length, each return
//! exactly what the same request returns alone, and the batch ran them together.

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
