//! Artifacts anywhere: a checkpoint a trainer writes to S3-compatible object storage (moto's
//! server mode) is served by a gateway on another host, one that shares nothing with the
//! trainer but the store's URL.

use quark_e2e::{TestBroker, TestDb};
use quark_events::bus::{Publisher, ensure_topics};
use quark_events::{Event, EventKind, ModelTrained, Timestamp, samples};
use quark_ml::checkpoint;
use quark_ml::gpt::{Gpt, GptConfig};
use quark_runtime::artifacts::testing::S3Server;
use quark_runtime::{ArtifactStore, Settings};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const URL: &str = "s3://quark/models";
const TEXT: &str = "To be, or not to be, that is the question: whether 'tis nobler in the mind \
                    to suffer the slings and arrows of outrageous fortune.";

/// What the trainer does at the end of a run: a checkpoint written, published with its files.
async fn train_and_publish(store: &ArtifactStore, dir: &Path) -> ModelTrained {
    let tokenizer = quark_ml::tokenizer::train_chars(TEXT).unwrap();
    let shape = GptConfig {
        vocab_size: tokenizer.get_vocab_size(true) as i64,
        block_size: 32,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
        layout: Default::default(),
    };
    let model = Gpt::new(shape, tch::Device::Cpu, 7).unwrap();
    let step = dir.join("run").join("step-1");
    checkpoint::save(&step, &model, &tokenizer, None, &json!({"step": 1})).unwrap();
    let artifact = store
        .put_dir(&step, quark_trainer::MODEL_FILES)
        .await
        .unwrap();
    let Event::ModelTrained(mut trained) = samples::sample(EventKind::ModelTrained, "trainer")
    else {
        unreachable!("a model.trained sample")
    };
    trained.checkpoint = artifact;
    trained
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_written_to_s3_is_served_by_a_gateway_reading_from_it() {
    let s3 = S3Server::start();
    s3.create_bucket("quark");
    let dir = tempfile::tempdir().unwrap();
    let trainer_host = dir.path().join("trainer");
    let gateway_host = dir.path().join("gateway");
    std::fs::create_dir_all(&gateway_host).unwrap();

    let trainer_store = ArtifactStore::from_settings(
        &s3.settings(URL, &trainer_host.join("artifact-cache")),
        &trainer_host,
    )
    .unwrap();
    let trained = train_and_publish(&trainer_store, &trainer_host).await;
    assert!(
        trained.checkpoint.uri.starts_with(&format!("{URL}/")),
        "{}",
        trained.checkpoint.uri
    );
    // Nothing of the trainer's disk is left to read.
    std::fs::remove_dir_all(&trainer_host).unwrap();

    // The gateway host names the same store through its settings.
    let mut settings = Settings {
        data_dir: gateway_host.clone(),
        ..Settings::default()
    };
    settings.artifacts = s3.settings(URL, &gateway_host.join("artifact-cache"));
    let broker = TestBroker::start();
    ensure_topics(&broker.bus()).await.unwrap();
    let gateway = quark_gateway::Gateway::new(
        settings.gateway.clone(),
        Arc::new(settings.artifact_store().unwrap()),
        &settings.data_dir,
        TestDb::Sqlite.open(&gateway_host).await,
        Publisher::new(&broker.bus(), quark_gateway::NAME).unwrap(),
    );
    gateway
        .serve(&quark_lineage::Model::trained(&trained), Timestamp::now().0)
        .await
        .unwrap();
    let local = gateway_host
        .join("models")
        .join(trained.model_id.to_string());
    assert!(local.join(".complete").exists(), "downloaded from S3");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(gateway.clone().run(listener, shutdown.clone()));
    let response = reqwest::Client::new()
        .post(format!("http://{address}/v1/completions"))
        // Seeded: an untrained model samples its end-of-text token now and then.
        .json(&json!({"model": trained.model_id.to_string(), "prompt": "To be", "max_tokens": 4, "seed": 1}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion", "{body}");
    assert_eq!(body["model"], trained.model_id.to_string(), "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
