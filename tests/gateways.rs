//! Gateways share only events: two gateways behind one broker, each with its own database.
//! Feedback sent to gateway B for a response gateway A served reaches the augmenter (which
//! joins it to A's response.served) and is released in the SFT dataset a retrain is asked to
//! train on; a restarted gateway serves the champion it was serving from its own table.

use quark_e2e::{AugmenterTables, Cluster, GatewayTables, KEY, open, promotion};
use quark_events::bus::Publisher;
use quark_events::*;
use quark_runtime::config::AugmentSettings;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feedback_to_one_gateway_for_a_response_of_another_is_learnt_from() {
    let cluster = Cluster::start().await;
    let db_a = open::<GatewayTables>(cluster.dir.path(), "a.db").await;
    let db_b = open::<GatewayTables>(cluster.dir.path(), "b.db").await;
    let db_augmenter = open::<AugmenterTables>(cluster.dir.path(), "augmenter.db").await;
    let settings = AugmentSettings {
        min_examples: 1,
        release_interval_secs: 0,
        reward_model: true,
        rloo_prompts: 0,
        training_timeout_secs: 3600,
    };
    let augmenter = quark_augmenter::AugmenterService::new(
        cluster.store.clone(),
        db_augmenter.clone(),
        settings,
    );
    cluster.consume(Arc::new(augmenter), &db_augmenter);
    let a = cluster.gateway("a", &db_a, true, None).await;
    let b = cluster.gateway("b", &db_b, true, None).await;
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
    let url = cluster.gateway("g", &db, true, None).await;
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
    let url = restarted.gateway("g", &db, false, None).await;
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
