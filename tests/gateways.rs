//! Gateways share only events: two gateways behind one broker, each with its own database.
//! Feedback sent to gateway B for a response gateway A served reaches the augmenter (which
//! joins it to A's response.served) and is released in the SFT dataset a retrain is asked to
//! train on; a restarted gateway serves the champion it was serving from its own table.

use quark_e2e::{TestBroker, decode_all, read_topic, until};
use quark_events::bus::{LedgerMigration, Publisher, Runner, ensure_topics};
use quark_events::*;
use quark_gateway::{Gateway, PromotionFollower};
use quark_ml::gpt::{Gpt, GptConfig};
use quark_ml::{checkpoint, tokenizer};
use quark_runtime::ArtifactStore;
use quark_runtime::config::{AugmentSettings, GatewaySettings};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const KEY: &str = "quark-local-key";

/// A gateway's database: the ledger and the gateway's own table, nothing of any other service.
struct GatewayTables;

impl MigratorTrait for GatewayTables {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(LedgerMigration),
            Box::new(quark_gateway::LINEAGE.migration()),
        ]
    }
}

struct AugmenterTables;

impl MigratorTrait for AugmenterTables {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(LedgerMigration),
            Box::new(quark_augmenter::AugmenterMigration),
            Box::new(quark_augmenter::JoinMigration),
        ]
    }
}

async fn open<M: MigratorTrait>(dir: &Path, name: &str) -> DatabaseConnection {
    let url = format!("sqlite://{}?mode=rwc", dir.join(name).display());
    quark_runtime::db::open::<M>(&url).await.unwrap()
}

/// A tiny untrained model in the artifact store, and its promotion as the registry sends it.
async fn promotion(store: &ArtifactStore, dir: &Path) -> ModelPromoted {
    let tok = tokenizer::train_chars(
        "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!@-_0123456789'",
    )
    .unwrap();
    let config = GptConfig {
        vocab_size: tok.get_vocab_size(true) as i64,
        block_size: 64,
        n_layer: 1,
        n_head: 1,
        n_embd: 16,
        dropout: 0.0,
    };
    let gpt = Gpt::new(config, tch::Device::Cpu, 7).unwrap();
    let path = dir.join("model");
    checkpoint::save(&path, &gpt, &tok, None, &json!({})).unwrap();
    let files = [
        checkpoint::CONFIG,
        checkpoint::WEIGHTS,
        checkpoint::TOKENIZER,
        checkpoint::STATE,
    ];
    let artifact = store.put_dir(&path, &files).await.unwrap();
    ModelPromoted {
        header: EventHeader::root("registry"),
        model_id: Id::random(),
        alias: Alias::Champion,
        previous_model_id: None,
        reason: PromotionReason::GatePassed,
        evaluation_id: Some(Id::random()),
        checkpoint: Some(artifact),
        tokenizer_id: Some(Id::random()),
        tokenizer: None,
        run_kind: Some(RunKind::Pretrain),
        parent_model_id: None,
        dataset_ids: Some(vec![Id::random()]),
        trained_at: Some(Timestamp::now()),
    }
}

/// Everything one test runs, stopped together.
struct Cluster {
    broker: TestBroker,
    dir: tempfile::TempDir,
    store: Arc<ArtifactStore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    http: reqwest::Client,
}

impl Cluster {
    async fn start() -> Cluster {
        let broker = TestBroker::start();
        ensure_topics(&broker.bus()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ArtifactStore::local(dir.path().join("artifacts")).unwrap());
        Cluster {
            broker,
            dir,
            store,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            http: reqwest::Client::new(),
        }
    }

    fn consume(&self, handler: Arc<dyn quark_events::bus::Handler>, db: &DatabaseConnection) {
        let runner = Runner::new(handler, self.broker.bus(), db.clone());
        let token = self.shutdown.clone();
        self.tasks
            .spawn(async move { runner.run(token).await.unwrap() });
    }

    /// Starts gateway `instance` on a free port with database `db`; with `follow`, also its
    /// promotion consumer. Returns its base URL.
    async fn gateway(&self, instance: &str, db: &DatabaseConnection, follow: bool) -> String {
        let settings = GatewaySettings {
            instance: instance.into(),
            api_keys: vec![KEY.into()],
            telemetry_window_ms: 60_000,
            ..quark_runtime::Settings::default().gateway
        };
        let publisher = Publisher::new(&self.broker.bus(), quark_gateway::NAME).unwrap();
        let data = self.dir.path().join(instance);
        let gateway = Gateway::new(settings, self.store.clone(), &data, db.clone(), publisher);
        if follow {
            let name = format!("{}-{instance}", quark_gateway::NAME);
            let gateway = gateway.clone();
            self.consume(Arc::new(PromotionFollower { gateway, name }), db);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = self.shutdown.clone();
        self.tasks
            .spawn(async move { gateway.run(listener, token).await.unwrap() });
        url
    }

    async fn post(&self, url: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(url).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn wait_until_serving(&self, url: &str, model: Id) {
        until(
            "the gateway to serve the champion",
            Duration::from_secs(60),
            || async {
                match self.http.get(format!("{url}/v1/models")).send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| {
                        v["data"][0]["id"].as_str() == Some(model.to_string().as_str())
                    }),
                    Err(_) => false,
                }
            },
        )
        .await;
    }

    /// The first `count` events of `kind` on the log.
    async fn events(&self, kind: EventKind, count: usize) -> Vec<Event> {
        let bus = self.broker.bus();
        tokio::task::spawn_blocking(move || decode_all(&read_topic(&bus, kind.topic(), count)))
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feedback_to_one_gateway_for_a_response_of_another_is_learnt_from() {
    let cluster = Cluster::start().await;
    let db_a = open::<GatewayTables>(cluster.dir.path(), "a.db").await;
    let db_b = open::<GatewayTables>(cluster.dir.path(), "b.db").await;
    let db_augmenter = open::<AugmenterTables>(cluster.dir.path(), "augmenter.db").await;
    let settings = AugmentSettings {
        min_examples: 1,
        release_interval_secs: 0,
    };
    let augmenter = quark_augmenter::AugmenterService::new(
        cluster.store.clone(),
        db_augmenter.clone(),
        settings,
    );
    cluster.consume(Arc::new(augmenter), &db_augmenter);
    let a = cluster.gateway("a", &db_a, true).await;
    let b = cluster.gateway("b", &db_b, true).await;
    let promoted = promotion(&cluster.store, cluster.dir.path()).await;
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    publisher.publish(&promoted.clone().into()).await.unwrap();
    cluster.wait_until_serving(&a, promoted.model_id).await;
    cluster.wait_until_serving(&b, promoted.model_id).await;

    // A serves a response (its prompt holds an e-mail address) and a streamed chat reply.
    let prompt = "Who is Hamlet? Mail jane.doe@acme-mail.com";
    let (status, body) = cluster
        .post(
            &format!("{a}/v1/completions"),
            json!({"model": "champion", "prompt": prompt, "max_tokens": 8}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let request_id = body["id"].as_str().unwrap().to_string();
    let (status, _) = cluster
        .post(
            &format!("{a}/v1/chat/completions"),
            json!({"model": "champion", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": true}),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // B takes the feedback, and refuses an id no gateway can have issued.
    let correction = "Hamlet is the prince of Denmark.";
    let (status, body) = cluster
        .post(
            &format!("{b}/v1/feedback"),
            json!({"request_id": request_id, "rating": 1, "correction": correction}),
            Some(KEY),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let feedback_id = body["feedback_id"].as_str().unwrap().to_string();
    let (status, body) = cluster
        .post(
            &format!("{b}/v1/feedback"),
            json!({"request_id": "req-unknown", "rating": 1}),
            Some(KEY),
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (404, Some("request_id")),
        "{body}"
    );

    // Both responses are on the log, scrubbed, from A.
    let served: Vec<ResponseServed> = cluster
        .events(EventKind::ResponseServed, 2)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ResponseServed(r) => Some(r),
            _ => None,
        })
        .collect();
    let first = served.iter().find(|r| r.request_id == request_id).unwrap();
    assert_eq!(
        (first.instance.as_str(), first.model_id),
        ("a", promoted.model_id)
    );
    assert!(
        first.prompt.contains("<EMAIL>") && !first.prompt.contains("jane.doe"),
        "{}",
        first.prompt
    );
    assert!(
        served
            .iter()
            .any(|r| r.streamed && r.endpoint == "chat" && r.messages.len() == 1)
    );

    // The augmenter joined B's feedback to A's response and released it to a retraining.
    let retrain = match &cluster.events(EventKind::RetrainRequested, 1).await[0] {
        Event::RetrainRequested(r) => r.clone(),
        other => panic!("{other:?}"),
    };
    let dataset = match &cluster.events(EventKind::DatasetPrepared, 1).await[0] {
        Event::DatasetPrepared(d) => d.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (dataset.kind, retrain.dataset_ids.clone()),
        (DatasetKind::Sft, vec![dataset.dataset_id])
    );
    assert_eq!(retrain.run_kind, RunKind::Sft);
    assert_eq!(
        dataset
            .source_collections
            .iter()
            .map(Id::to_string)
            .collect::<Vec<_>>(),
        [feedback_id]
    );
    let text = String::from_utf8(cluster.store.get(&dataset.train).await.unwrap()).unwrap();
    let record: Value = serde_json::from_str(
        serde_json::from_str::<Value>(text.lines().next().unwrap()).unwrap()["text"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        record,
        json!({"prompt": first.prompt, "response": correction})
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_gateway_serves_its_champion_from_its_own_table() {
    let cluster = Cluster::start().await;
    let db = open::<GatewayTables>(cluster.dir.path(), "gateway.db").await;
    let promoted = promotion(&cluster.store, cluster.dir.path()).await;
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    publisher.publish(&promoted.clone().into()).await.unwrap();
    let url = cluster.gateway("g", &db, true).await;
    cluster.wait_until_serving(&url, promoted.model_id).await;
    let Cluster {
        broker,
        dir,
        store,
        shutdown,
        tasks,
        http,
    } = cluster;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;

    // The database holds the gateway's tables and no other service's.
    let tables: Vec<String> = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM sqlite_master WHERE type = 'table'",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "name").unwrap())
        .collect();
    assert!(
        !tables.iter().any(|t| t.starts_with("registry")),
        "{tables:?}"
    );

    // Restarted without its promotion consumer: it serves the champion from its table.
    let restarted = Cluster {
        broker,
        dir,
        store,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        http,
    };
    let url = restarted.gateway("g", &db, false).await;
    restarted.wait_until_serving(&url, promoted.model_id).await;
    let (status, body) = restarted
        .post(
            &format!("{url}/v1/completions"),
            json!({"model": "champion", "prompt": "Who?", "max_tokens": 4}),
            None,
        )
        .await;
    assert_eq!(
        (status, body["model"].as_str()),
        (200, Some(promoted.model_id.to_string().as_str())),
        "{body}"
    );
    restarted.stop().await;
}
