//! A broker, an artifact store and the in-process services and gateways of one test, stopped
//! together; a tiny untrained model to serve.

use crate::{TestBroker, decode_all, read_topic, until};
use quark_events::bus::LedgerMigration;
use quark_events::bus::{Handler, Publisher, Runner, ensure_topics};
use quark_events::*;
use quark_gateway::knowledge::Knowledge;
use quark_gateway::{Follower, Gateway};
use quark_ml::gpt::{Gpt, GptConfig};
use quark_ml::{checkpoint, tokenizer};
use quark_runtime::ArtifactStore;
use quark_runtime::config::GatewaySettings;
use sea_orm::DatabaseConnection;
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const KEY: &str = "quark-local-key";

/// A gateway's database: the ledger and the gateway's own table, nothing of any other service.
pub struct GatewayTables;

impl MigratorTrait for GatewayTables {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(LedgerMigration),
            Box::new(quark_gateway::LINEAGE.migration()),
        ]
    }
}

/// The augmenter's tables: its examples, the responses it joins feedback to, the ratings.
pub struct AugmenterTables;

impl MigratorTrait for AugmenterTables {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(LedgerMigration),
            Box::new(quark_augmenter::AugmenterMigration),
            Box::new(quark_augmenter::JoinMigration),
            Box::new(quark_augmenter::ratings::RatingsMigration),
            Box::new(quark_augmenter::TrainingsMigration),
        ]
    }
}

pub async fn open<M: MigratorTrait>(dir: &Path, name: &str) -> DatabaseConnection {
    let url = format!("sqlite://{}?mode=rwc", dir.join(name).display());
    quark_runtime::db::open::<M>(&url).await.unwrap()
}

/// A tiny untrained model in the artifact store, and its promotion as the registry sends it.
pub async fn promotion(store: &ArtifactStore, dir: &Path) -> ModelPromoted {
    promotion_with_context(store, dir, 64).await
}

/// [`promotion`] of a model whose context is `block_size` tokens.
pub async fn promotion_with_context(
    store: &ArtifactStore,
    dir: &Path,
    block_size: i64,
) -> ModelPromoted {
    promotion_sized(store, &dir.join("model"), block_size, 16, 7).await
}

/// [`promotion`] of a model `n_embd` wide with weights drawn from `seed`, saved at `path`.
pub async fn promotion_sized(
    store: &ArtifactStore,
    path: &Path,
    block_size: i64,
    n_embd: i64,
    seed: u64,
) -> ModelPromoted {
    let tok = tokenizer::train_chars(
        "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,?!@-_0123456789'",
    )
    .unwrap();
    let config = GptConfig {
        vocab_size: tok.get_vocab_size(true) as i64,
        block_size,
        n_layer: 1,
        n_head: 1,
        n_embd,
        dropout: 0.0,
        layout: Default::default(),
    };
    let gpt = Gpt::new(config, tch::Device::Cpu, seed).unwrap();
    checkpoint::save(path, &gpt, &tok, None, &json!({})).unwrap();
    promotion_of(store, path).await
}

/// The checkpoint at `path` in the artifact store, and its promotion to champion as the
/// registry sends it.
pub async fn promotion_of(store: &ArtifactStore, path: &Path) -> ModelPromoted {
    let files = [
        checkpoint::CONFIG,
        checkpoint::WEIGHTS,
        checkpoint::TOKENIZER,
        checkpoint::STATE,
    ];
    let artifact = store.put_dir(path, &files).await.unwrap();
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
        alias_name: None,
        operator: None,
        note: None,
    }
}

/// Everything one test runs, stopped together.
pub struct Cluster {
    pub broker: TestBroker,
    pub dir: tempfile::TempDir,
    pub store: Arc<ArtifactStore>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub http: reqwest::Client,
}

impl Cluster {
    pub async fn start() -> Cluster {
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

    pub fn consume(&self, handler: Arc<dyn Handler>, db: &DatabaseConnection) {
        let runner = Runner::new(handler, self.broker.bus(), db.clone());
        let token = self.shutdown.clone();
        self.tasks
            .spawn(async move { runner.run(token).await.unwrap() });
    }

    /// Starts gateway `instance` on a free port with database `db`; with `follow`, also its
    /// follower (promotions, intents datasets); with `knowledge`, retrieval. Returns its base URL.
    pub async fn gateway(
        &self,
        instance: &str,
        db: &DatabaseConnection,
        follow: bool,
        knowledge: Option<Knowledge>,
    ) -> String {
        let settings = GatewaySettings {
            instance: instance.into(),
            api_keys: vec![KEY.into()],
            telemetry_window_ms: 60_000,
            ..quark_runtime::Settings::default().gateway
        };
        self.gateway_with(settings, db, follow, knowledge, |_| {})
            .await
    }

    /// [`Cluster::gateway`] with `settings`, and `prepare` called on the gateway before it
    /// answers.
    pub async fn gateway_with(
        &self,
        settings: GatewaySettings,
        db: &DatabaseConnection,
        follow: bool,
        knowledge: Option<Knowledge>,
        prepare: impl FnOnce(&Gateway),
    ) -> String {
        let instance = settings.instance.clone();
        let publisher = Publisher::new(&self.broker.bus(), quark_gateway::NAME).unwrap();
        let data = self.dir.path().join(&instance);
        let gateway = Gateway::new(settings, self.store.clone(), &data, db.clone(), publisher);
        if let Some(knowledge) = knowledge {
            gateway.attach_knowledge(knowledge);
        }
        prepare(&gateway);
        if follow {
            let name = format!("{}-{instance}", quark_gateway::NAME);
            let gateway = gateway.clone();
            self.consume(Arc::new(Follower { gateway, name }), db);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = self.shutdown.clone();
        self.tasks
            .spawn(async move { gateway.run(listener, token).await.unwrap() });
        url
    }

    pub async fn post(&self, url: &str, body: Value, key: Option<&str>) -> (u16, Value) {
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

    /// `GET url`, read as JSON.
    pub async fn get(&self, url: &str) -> Value {
        json_of(self.http.get(url)).await
    }

    /// The gateway's `/v1/admin/status`.
    pub async fn admin_status(&self, url: &str) -> Value {
        json_of(
            self.http
                .get(format!("{url}/v1/admin/status"))
                .bearer_auth(KEY),
        )
        .await
    }

    pub async fn wait_until_serving(&self, url: &str, model: Id) {
        until(
            "the gateway to serve the champion",
            Duration::from_secs(60),
            || async {
                match self.http.get(format!("{url}/v1/models")).send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| {
                        v["data"].as_array().into_iter().flatten().any(|m| {
                            m["id"].as_str() == Some(model.to_string().as_str())
                                && m["aliases"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .any(|a| a == "champion")
                        })
                    }),
                    Err(_) => false,
                }
            },
        )
        .await;
    }

    /// The first `count` events of `kind` on the log.
    pub async fn events(&self, kind: EventKind, count: usize) -> Vec<Event> {
        let bus = self.broker.bus();
        tokio::task::spawn_blocking(move || decode_all(&read_topic(&bus, kind.topic(), count)))
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The JSON `request` is answered with.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}
