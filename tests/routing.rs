//! Several models at once, and the router (steps 7 and 8). A gateway follows model.promoted
//! for every alias and serves them all within its memory budget, unloading the least recently
//! used; requests that name `quark` are routed by intent (the ML core's classifier on the
//! pretrained sentence encoder), split by a canary share, fall back when the chosen model
//! cannot load, and are shadowed by the challenger, whose answers are published, unseen.

use quark_e2e::{Cluster, GatewayTables, KEY, encoder_dir, open, promotion_sized};
use quark_events::bus::{LedgerMigration, Publisher};
use quark_events::*;
use quark_gateway::intents::Intents;
use quark_ml::checkpoint;
use quark_ml::classifier::ClassifierConfig;
use quark_ml::encoder::SentenceEncoder;
use quark_ml::intents::{self, IntentClassifier};
use quark_runtime::config::{GatewaySettings, RouteRule, RouterSettings};
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The evaluator's tables: its lineage and the shadow pairs.
struct EvaluatorTables;

impl MigratorTrait for EvaluatorTables {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(LedgerMigration),
            Box::new(quark_evaluator::LINEAGE.migration()),
            Box::new(quark_evaluator::shadow::ShadowMigration),
        ]
    }
}

/// Answers compared per shadow report.
const SHADOW_BATCH: usize = 100;

/// The evaluator's shadow judge and lineage follower, consuming.
async fn evaluator(cluster: &Cluster) {
    let db = open::<EvaluatorTables>(cluster.dir.path(), "evaluator.db").await;
    let data = cluster.dir.path().join("evaluator");
    let settings = quark_runtime::config::EvaluateSettings {
        shadow_batch: SHADOW_BATCH,
        ..quark_runtime::Settings::default().evaluate
    };
    let judge = |settings| {
        quark_evaluator::shadow::ShadowJudge::new(
            cluster.store.clone(),
            db.clone(),
            &data,
            settings,
        )
    };
    // A device this machine lacks is refused when the judge is made, not at its first report.
    let elsewhere = quark_runtime::config::EvaluateSettings {
        device: "cuda:99".into(),
        ..settings.clone()
    };
    let refused = judge(&elsewhere).err().expect("a missing device refused");
    assert!(refused.to_string().contains("cuda:99"), "{refused}");
    let judge = judge(&settings).unwrap();
    cluster.consume(Arc::new(quark_evaluator::follower()), &db);
    cluster.consume(Arc::new(judge), &db);
}

/// An untrained reward model of the champion's shape, announced as a reward run from it.
async fn reward_model(cluster: &Cluster, champion: &ModelPromoted) -> ModelTrained {
    let (mut gpt, tokenizer) =
        checkpoint::load(&cluster.dir.path().join("model-0"), tch::Device::Cpu).unwrap();
    gpt.add_score_head(Some(3)).unwrap();
    let dir = cluster.dir.path().join("reward");
    checkpoint::save(&dir, &gpt, &tokenizer, None, &json!({})).unwrap();
    let files = [
        checkpoint::CONFIG,
        checkpoint::WEIGHTS,
        checkpoint::TOKENIZER,
        checkpoint::STATE,
    ];
    let Event::ModelTrained(mut trained) = samples::sample(EventKind::ModelTrained, "trainer")
    else {
        unreachable!()
    };
    trained.run_kind = RunKind::Reward;
    trained.parent_model_id = Some(champion.model_id);
    trained.tokenizer_id = champion.tokenizer_id.unwrap();
    trained.checkpoint = cluster.store.put_dir(&dir, &files).await.unwrap();
    trained.adapter = None;
    trained
}

/// Models of one tokenizer (3.3 MB of weights each), promoted to `aliases` in
/// order; each promotion a millisecond after the one before.
async fn promote(cluster: &Cluster, aliases: &[&str]) -> Vec<ModelPromoted> {
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    let tokenizer = Id::random();
    // One chain, so one partition: followers read the moves in the order they were made.
    let chain = Id::random();
    let mut promoted = Vec::new();
    for (i, alias) in aliases.iter().enumerate() {
        let path = cluster.dir.path().join(format!("model-{i}"));
        let mut p = promotion_sized(&cluster.store, &path, 64, 256, 11 + i as u64).await;
        p.tokenizer_id = Some(tokenizer);
        (p.alias, p.alias_name) = match *alias {
            "champion" => (Alias::Champion, None),
            "challenger" => (Alias::Challenger, None),
            "previous" => (Alias::Previous, None),
            named => (Alias::Named, Some(named.to_string())),
        };
        p.header.occurred_at = Timestamp(p.header.occurred_at.0 + i as i64);
        p.header.correlation_id = chain;
        publisher.publish(&p.clone().into()).await.unwrap();
        promoted.push(p);
    }
    promoted
}

fn publisher_of(cluster: &Cluster) -> Publisher {
    Publisher::new(&cluster.broker.bus(), "registry").unwrap()
}

async fn models(cluster: &Cluster, url: &str) -> Vec<Value> {
    let listed = cluster.get(&format!("{url}/v1/models")).await;
    listed["data"].as_array().unwrap().clone()
}

/// (aliases, loaded) of each model `GET /v1/models` lists, by model id.
async fn fleet(cluster: &Cluster, url: &str) -> HashMap<String, (Vec<String>, bool)> {
    models(cluster, url)
        .await
        .into_iter()
        .map(|m| {
            let aliases = m["aliases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let id = m["id"].as_str().unwrap().to_string();
            (id, (aliases, m["loaded"].as_bool().unwrap()))
        })
        .collect()
}

async fn complete(cluster: &Cluster, url: &str, model: &str, prompt: &str) -> Value {
    let (status, body) = cluster
        .post(
            &format!("{url}/v1/completions"),
            json!({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{model}: {body}");
    body
}

fn settings(instance: &str, memory_mb: u64, router: RouterSettings) -> GatewaySettings {
    GatewaySettings {
        instance: instance.into(),
        api_keys: vec![KEY.into()],
        telemetry_window_ms: 60_000,
        models_memory_mb: memory_mb,
        router,
        ..quark_runtime::Settings::default().gateway
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_alias_is_served_within_the_memory_budget() {
    let cluster = Cluster::start().await;
    let db = open::<GatewayTables>(cluster.dir.path(), "g.db").await;
    // Room for two of the three models' weights.
    let config = settings("fleet", 8, RouterSettings::default());
    let url = cluster.gateway_with(config, &db, true, None, |_| {}).await;
    let promoted = promote(&cluster, &["champion", "challenger", "legal"]).await;
    let [champion, challenger, legal] = [0, 1, 2].map(|i| promoted[i].model_id.to_string());
    quark_e2e::until(
        "the third model loaded",
        Duration::from_secs(60),
        || async {
            fleet(&cluster, &url)
                .await
                .get(&legal)
                .is_some_and(|(_, loaded)| *loaded)
        },
    )
    .await;
    // The named alias, promoted last, took the challenger's room; the champion stays.
    let listed = fleet(&cluster, &url).await;
    assert_eq!(listed[&champion], (vec!["champion".into()], true));
    assert_eq!(listed[&challenger], (vec!["challenger".into()], false));
    assert_eq!(listed[&legal], (vec!["legal".into()], true));

    // Each name reaches its model; the challenger is loaded again on demand, unloading the
    // least recently used other (legal).
    for (name, id) in [
        ("quark", &champion),
        ("champion", &champion),
        ("legal", &legal),
        ("challenger", &challenger),
        (legal.as_str(), &legal),
    ] {
        assert_eq!(
            complete(&cluster, &url, name, "Hello").await["model"],
            *id,
            "{name}"
        );
    }
    let listed = fleet(&cluster, &url).await;
    assert!(listed[&legal].1 && !listed[&challenger].1, "{listed:?}");
    let retrieved: Value = cluster
        .http
        .get(format!("{url}/v1/models/legal"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retrieved["id"], legal.as_str());
    let (status, body) = cluster
        .post(
            &format!("{url}/v1/completions"),
            json!({"model": "no-such-alias", "prompt": "Hi"}),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (404, Some("model"))
    );

    // The challenger promoted to champion: no longer the challenger, and the old champion
    // becomes `previous` when the registry says so.
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    let mut up = promoted[1].clone();
    (up.header, up.alias, up.previous_model_id) = (
        EventHeader::root("registry"),
        Alias::Champion,
        Some(promoted[0].model_id),
    );
    let mut previous = promoted[0].clone();
    (previous.header, previous.alias) = (up.header.clone(), Alias::Previous);
    previous.header.event_id = Id::random();
    publisher.publish(&up.clone().into()).await.unwrap();
    publisher.publish(&previous.into()).await.unwrap();
    quark_e2e::until("the swap", Duration::from_secs(60), || async {
        let listed = fleet(&cluster, &url).await;
        listed.get(&challenger).is_some_and(|m| m.0 == ["champion"])
            && listed.get(&champion).is_some_and(|m| m.0 == ["previous"])
    })
    .await;
    assert_eq!(
        complete(&cluster, &url, "quark", "Hi").await["model"],
        challenger
    );
    assert_eq!(
        complete(&cluster, &url, "previous", "Hi").await["model"],
        champion
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn before_the_first_champion_the_champion_is_unavailable_not_missing() {
    let cluster = Cluster::start().await;
    let db = open::<GatewayTables>(cluster.dir.path(), "g.db").await;
    let config = settings("first", 64, RouterSettings::default());
    let url = cluster.gateway_with(config, &db, true, None, |_| {}).await;
    // The registry's first moves: the model becomes challenger, then champion.
    let challenger = promote(&cluster, &["challenger"]).await.remove(0);
    quark_e2e::until("the challenger served", Duration::from_secs(60), || async {
        !fleet(&cluster, &url).await.is_empty()
    })
    .await;
    for name in ["champion", "quark"] {
        let (status, body) = cluster
            .post(
                &format!("{url}/v1/completions"),
                json!({"model": name, "prompt": "Hi", "max_tokens": 1}),
                None,
            )
            .await;
        assert_eq!(status, 503, "{name}: {body}");
        assert_eq!(body["error"]["type"], "server_error", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no champion"),
            "{body}"
        );
    }
    let id = challenger.model_id.to_string();
    assert_eq!(
        complete(&cluster, &url, "challenger", "Hi").await["model"],
        id
    );
    let mut champion = challenger.clone();
    (champion.header, champion.alias) = (EventHeader::root("registry"), Alias::Champion);
    publisher_of(&cluster)
        .publish(&champion.into())
        .await
        .unwrap();
    quark_e2e::until("the champion served", Duration::from_secs(60), || async {
        fleet(&cluster, &url)
            .await
            .get(&id)
            .is_some_and(|(aliases, _)| aliases.iter().any(|a| a == "champion"))
    })
    .await;
    assert_eq!(complete(&cluster, &url, "quark", "Hi").await["model"], id);
    cluster.stop().await;
}

/// The classifier trained on the labelled intents shipped in `examples/`, with its held-out
/// accuracy.
fn intent_classifier() -> Intents {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/intents.jsonl");
    let (training, held_out) = intents::split(intents::read_examples(&path).unwrap());
    let encoder = SentenceEncoder::load(&encoder_dir(), tch::Device::Cpu).unwrap();
    let (classifier, report) =
        IntentClassifier::train(encoder, &training, &held_out, &ClassifierConfig::default())
            .unwrap();
    eprintln!(
        "intents: {} trained on, {} held out, accuracy {:.3}",
        report.trained_on, report.held_out, report.accuracy
    );
    assert!(report.held_out >= 20, "{report:?}");
    assert!(report.accuracy >= 0.8, "held-out accuracy {report:?}");
    Intents {
        classifier: std::sync::Mutex::new(classifier),
        report,
    }
}

/// Every response.served on the log once `lives` live answers and the shadow answer of each
/// live one that names a shadow are there. Each read asks for no more than is certainly on
/// the log: the live answers were acknowledged before their replies, and each shadowed one
/// has its shadow answer.
async fn all_served(cluster: &Cluster, lives: usize) -> Vec<ResponseServed> {
    let mut count = lives;
    loop {
        let served: Vec<ResponseServed> = cluster
            .events(EventKind::ResponseServed, count)
            .await
            .into_iter()
            .filter_map(|e| match e {
                Event::ResponseServed(r) => Some(r),
                _ => None,
            })
            .collect();
        let live = served.iter().filter(|r| r.shadow_of.is_none()).count();
        let shadowed = served
            .iter()
            .filter(|r| r.routing.as_ref().is_some_and(|x| x.shadow.is_some()))
            .count();
        if live == lives {
            let total = lives + shadowed;
            if served.len() == total {
                return served;
            }
            count = total;
        } else {
            count += lives - live;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_routed_by_intent_split_fall_back_and_are_shadowed() {
    let cluster = Cluster::start().await;
    let classifier = intent_classifier();
    let db = open::<GatewayTables>(cluster.dir.path(), "r.db").await;
    let mut rest = RouteRule::to("rest", None, "champion");
    (rest.canary_share, rest.canary_alias) = (0.1, Some("challenger".into()));
    let mut writing = RouteRule::to("writing", Some("writing"), "broken");
    writing.fallback = Some("champion".into());
    let router = RouterSettings {
        rules: vec![RouteRule::to("code", Some("code"), "coder"), writing, rest],
        shadow_share: 0.5,
        ..RouterSettings::default()
    };
    let config = settings("router", 4096, router);
    let url = cluster
        .gateway_with(config, &db, true, None, |g| g.attach_intents(classifier))
        .await;
    let promoted = promote(&cluster, &["champion", "challenger", "coder"]).await;
    evaluator(&cluster).await;
    let judge = reward_model(&cluster, &promoted[0]).await;
    publisher_of(&cluster)
        .publish(&judge.clone().into())
        .await
        .unwrap();
    // An alias whose checkpoint cannot be fetched: its model never loads.
    let mut broken = promoted[2].clone();
    (broken.header, broken.model_id, broken.alias_name) = (
        EventHeader::root("registry"),
        Id::random(),
        Some("broken".into()),
    );
    broken.checkpoint.as_mut().unwrap().uri.push_str("-gone");
    publisher_of(&cluster)
        .publish(&broken.into())
        .await
        .unwrap();
    quark_e2e::until("four models listed", Duration::from_secs(60), || async {
        fleet(&cluster, &url).await.len() == 4
    })
    .await;
    let id = |i: usize| promoted[i].model_id.to_string();

    // Intent: code goes to the coder.
    let code = complete(
        &cluster,
        &url,
        "quark",
        "Write a Python function that sorts a list of numbers.",
    )
    .await;
    assert_eq!(code["model"], id(2));
    // Fallback: the writing rule's model cannot load; the champion answers.
    let poem = complete(
        &cluster,
        &url,
        "quark",
        "Write a short poem about the sea at night.",
    )
    .await;
    assert_eq!(poem["model"], id(0));

    // The canary: 10 % of the rule's requests go to the challenger.
    let mut to_challenger = 0;
    let mut live = Vec::new();
    let requests = 1_000;
    for chunk in (0..requests).collect::<Vec<_>>().chunks(25) {
        let replies = futures::future::join_all(
            chunk
                .iter()
                .map(|_| complete(&cluster, &url, "quark", "What is the capital of Australia?")),
        )
        .await;
        for reply in replies {
            to_challenger += usize::from(reply["model"] == id(1));
            live.push(reply["id"].as_str().unwrap().to_string());
        }
    }
    eprintln!("canary: {to_challenger} of {requests} to the challenger");
    assert!(
        (70..=130).contains(&to_challenger),
        "{to_challenger} of {requests}"
    );

    // Every routing decision is on the response event; shadow answers are events too.
    let lives = requests + 2;
    let served = all_served(&cluster, lives).await;
    let (live_events, shadows): (Vec<&ResponseServed>, Vec<&ResponseServed>) =
        served.iter().partition(|r| r.shadow_of.is_none());
    let by_request: HashMap<&str, &ResponseServed> = live_events
        .iter()
        .map(|r| (r.request_id.as_str(), *r))
        .collect();
    let routing = |reply: &Value| {
        by_request[reply["id"].as_str().unwrap()]
            .routing
            .clone()
            .unwrap()
    };
    let code_routing = routing(&code);
    assert_eq!(
        (
            code_routing.intent.as_deref(),
            code_routing.rule.as_str(),
            code_routing.alias.as_str()
        ),
        (Some("code"), "code", "coder")
    );
    let poem_routing = routing(&poem);
    assert_eq!(
        (
            poem_routing.rule.as_str(),
            poem_routing.alias.as_str(),
            poem_routing.fell_back_from.as_deref()
        ),
        ("writing", "champion", Some("broken"))
    );
    let canaries = live_events
        .iter()
        .filter(|r| r.routing.as_ref().is_some_and(|x| x.canary))
        .count();
    assert_eq!(canaries, to_challenger, "each canary decision is recorded");
    // Shadows: about half of the answers not from the challenger, answered by the challenger
    // too, never sent to the client (their request ids are not the ones the client got).
    let shadowed = live_events
        .iter()
        .filter(|r| r.routing.as_ref().is_some_and(|x| x.shadow.is_some()))
        .count();
    eprintln!("shadow: {shadowed} of {} live answers", live_events.len());
    assert!((350..=650).contains(&shadowed), "{shadowed}");
    assert_eq!(shadows.len(), shadowed);
    for shadow in &shadows {
        assert_eq!(shadow.model_id, promoted[1].model_id);
        let of = shadow.shadow_of.as_deref().unwrap();
        let live = by_request[of];
        assert_eq!(
            live.routing.as_ref().unwrap().shadow.as_deref(),
            Some("challenger")
        );
        assert_ne!(live.model_id, promoted[1].model_id);
        assert!(!by_request.contains_key(shadow.request_id.as_str()));
        assert_eq!(shadow.routing.as_ref().unwrap().alias, "challenger");
        assert_eq!(shadow.header.correlation_id, live.header.correlation_id);
    }

    // The evaluator's reports: one per 100 shadow answers of the champion's live ones, the
    // challenger judged by the champion's reward model; they promote nothing.
    let of_champion = shadows
        .iter()
        .filter(|s| by_request[s.shadow_of.as_deref().unwrap()].model_id == promoted[0].model_id)
        .count();
    let reports = of_champion / SHADOW_BATCH;
    assert!(reports >= 3, "{of_champion} shadow answers of the champion");
    let evaluations: Vec<EvalCompleted> = cluster
        .events(EventKind::EvalCompleted, reports)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::EvalCompleted(e) => Some(e),
            _ => None,
        })
        .collect();
    for e in &evaluations {
        eprintln!("shadow report: {:?}", e.metrics);
        assert_eq!(e.source, Some(RegressionSource::ShadowTraffic));
        assert!(!e.is_gate());
        assert_eq!(
            (e.model_id, e.baseline_model_id),
            (promoted[1].model_id, Some(promoted[0].model_id))
        );
        assert_eq!(
            e.metrics[quark_evaluator::shadow::PAIRS],
            SHADOW_BATCH as f64
        );
        assert_eq!(
            e.metrics[quark_evaluator::reward::PROMPTS],
            SHADOW_BATCH as f64
        );
        let rate = e.metrics[quark_evaluator::reward::WIN_RATE];
        assert!((0.0..=1.0).contains(&rate), "{rate}");
        let report: Value = serde_json::from_slice(
            &std::fs::read(cluster.store.verified_path(&e.report).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(report["reward_model_id"], judge.model_id.to_string());
        assert_eq!(report["pairs"].as_array().unwrap().len(), SHADOW_BATCH);
    }
    cluster.stop().await;
}
