//! The router's intent classifier learns through the loop, over the real broker: labelled
//! requests ingested with `quark ingest --kind intents` (→ the curator → dataset.prepared)
//! teach it a new intent, and so does feedback labelled `intent:<name>` on served answers
//! (→ the augmenter, which joins each to its response → an intents dataset). The gateway
//! retrains its classifier on each intents dataset, and the next request of that intent is
//! routed by it; a forgotten document of an intents dataset retrains it without that one.

use quark_e2e::{
    AugmenterTables, Cluster, GatewayTables, KEY, encoder_dir, open, promotion_with_context,
    quark_cli,
};
use quark_events::bus::Publisher;
use quark_events::*;
use quark_gateway::intents::IntentLearner;
use quark_runtime::Settings;
use quark_runtime::config::{AugmentSettings, GatewaySettings, RouteRule, RouterSettings};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Labelled requests of an intent the seed examples do not know, for ingestion.
const BILLING: &[&str] = &[
    "Why was my credit card charged twice this month?",
    "How do I download last month's invoice as a PDF?",
    "Can I get a refund for the annual plan I bought yesterday?",
    "My payment failed, how do I update my card details?",
    "What is the price difference between the monthly and yearly plans?",
    "Please cancel my subscription before the next billing date.",
    "I was billed for three seats but we only use two.",
    "Do you accept PayPal or bank transfer for invoices?",
    "Where can I find the VAT number on my receipt?",
    "How do I change the billing address on my account?",
    "The invoice shows the wrong company name, can you fix it?",
    "When will the refund appear on my bank statement?",
    "Can I switch from monthly to annual billing mid-cycle?",
    "Why did my bill go up this month?",
    "Is there a discount for non-profit organisations?",
    "I need a copy of every receipt from last year for my accountant.",
    "How do I add a purchase order number to my invoices?",
    "My trial ended and I was charged without warning.",
    "Can I pay for several accounts with one card?",
    "What happens to my data if I stop paying?",
    "How are prorated charges calculated when I add a user?",
    "The payment page says my card was declined but the bank says it is fine.",
    "Do you offer invoicing in euros instead of dollars?",
    "Can I get a refund for unused months?",
];

/// Requests of another intent no one has named: feedback labels them.
const TRAVEL: &[&str] = &[
    "Find me a cheap flight from London to Rome in May.",
    "Which hotels near the Eiffel Tower have free cancellation?",
    "Do I need a visa to visit Japan for two weeks?",
    "What is the best way to get from Barcelona airport to the city centre?",
    "Book a table for two near our hotel in Lisbon on Saturday night.",
    "How early should I arrive at the airport for an international flight?",
    "Is the night train from Vienna to Venice worth taking?",
    "Plan a three-day itinerary for a first visit to Edinburgh.",
    "Can I bring a second suitcase on a budget airline flight to Madrid?",
    "Which month has the mildest weather for hiking in Iceland?",
    "Suggest a family-friendly resort on the coast of Portugal.",
    "How do I rent a car in Sicily with a foreign driving licence?",
];

fn settings() -> GatewaySettings {
    let rule = |intent: &str| RouteRule::to(intent, Some(intent), "champion");
    GatewaySettings {
        instance: "intents".into(),
        api_keys: vec![KEY.into()],
        telemetry_window_ms: 60_000,
        router: RouterSettings {
            rules: vec![rule("billing"), rule("travel")],
            ..RouterSettings::default()
        },
        ..Settings::default().gateway
    }
}

/// The intents the gateway's classifier knows, its held-out accuracy and the examples it
/// learnt from (trained on and held out).
async fn classifier(cluster: &Cluster, url: &str) -> (Vec<String>, f64, u64) {
    let status = cluster.admin_status(url).await;
    let intents = &status["intents"];
    let labels = intents["intents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap().to_string())
        .collect();
    let examples = intents["trained_on"].as_u64().unwrap() + intents["held_out"].as_u64().unwrap();
    (labels, intents["accuracy"].as_f64().unwrap(), examples)
}

/// The held-out accuracy of the first classifier that knows `intent`.
async fn until_it_knows(cluster: &Cluster, url: &str, intent: &str) -> f64 {
    quark_e2e::until(intent, Duration::from_secs(120), || async {
        classifier(cluster, url).await.0.iter().any(|l| l == intent)
    })
    .await;
    classifier(cluster, url).await.1
}

/// Asks `prompt` of the routed model; returns the request id.
async fn ask(cluster: &Cluster, url: &str, prompt: &str) -> String {
    let (status, body) = cluster
        .post(
            &format!("{url}/v1/completions"),
            json!({"model": "quark", "prompt": prompt, "max_tokens": 2, "temperature": 0}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The intent and rule response.served records for each of the first `asked` requests.
async fn routed(cluster: &Cluster, asked: usize) -> Vec<(String, Option<String>, String)> {
    cluster
        .events(EventKind::ResponseServed, asked)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ResponseServed(r) => {
                let routing = r.routing?;
                Some((r.request_id, routing.intent, routing.rule))
            }
            _ => None,
        })
        .collect()
}

fn intents_datasets(events: Vec<Event>) -> Vec<DatasetPrepared> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::DatasetPrepared(d) if d.kind == DatasetKind::Intents => Some(d),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingested_and_feedback_labelled_intents_retrain_the_router() {
    let cluster = Cluster::start().await;
    let data = cluster.dir.path().to_path_buf();
    let db = open::<AugmenterTables>(&data, "services.db").await;
    let defaults = Settings::default();
    let curator =
        quark_curator::CuratorService::new(cluster.store.clone(), &data, &defaults.curate);
    cluster.consume(Arc::new(curator), &db);
    let augment = AugmentSettings {
        min_examples: TRAVEL.len() - 1,
        release_interval_secs: 0,
        reward_model: false,
        rloo_prompts: 0,
        training_timeout_secs: 3600,
    };
    let augmenter =
        quark_augmenter::AugmenterService::new(cluster.store.clone(), db.clone(), augment);
    cluster.consume(Arc::new(augmenter), &db);

    // The gateway starts from the seed examples shipped in `examples/` (four intents).
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/intents.jsonl");
    let learner = IntentLearner::new(encoder_dir(), Some(seed), data.join("intents"));
    let (seeded, trained_now) = learner.open().unwrap().unwrap();
    assert!(trained_now);
    let gateway_db = open::<GatewayTables>(&data, "gateway.db").await;
    let url = cluster
        .gateway_with(settings(), &gateway_db, true, None, |g| {
            g.attach_intents(seeded);
            g.attach_intent_learner(learner);
        })
        .await;
    let champion = promotion_with_context(&cluster.store, &data, 256).await;
    Publisher::new(&cluster.broker.bus(), "registry")
        .unwrap()
        .publish(&champion.clone().into())
        .await
        .unwrap();
    cluster.wait_until_serving(&url, champion.model_id).await;
    let (labels, accuracy, _) = classifier(&cluster, &url).await;
    assert_eq!(labels, ["chat", "code", "question", "writing"]);
    eprintln!("seed: held-out accuracy {accuracy:.3}");

    // Ingested: billing requests, all but one; the one left asks after the retraining.
    let file = data.join("billing.jsonl");
    let lines: Vec<String> = BILLING[1..]
        .iter()
        .map(|text| json!({"text": text, "intent": "billing"}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let file = file.display().to_string();
    quark_cli(
        &data,
        &cluster.broker.address,
        &["ingest", &file, "--kind", "intents"],
    );
    let accuracy = until_it_knows(&cluster, &url, "billing").await;
    eprintln!("after the ingested dataset: held-out accuracy {accuracy:.3}");
    assert!(accuracy >= 0.8, "{accuracy}");
    let mut asked = vec![ask(&cluster, &url, BILLING[0]).await];

    // Feedback: travel requests answered, each labelled `intent:travel` by its user, all but
    // one; the augmenter releases them as an intents dataset at `min_examples`.
    for prompt in &TRAVEL[1..] {
        let request_id = ask(&cluster, &url, prompt).await;
        let (status, body) = cluster
            .post(
                &format!("{url}/v1/feedback"),
                json!({"request_id": request_id, "rating": 4, "labels": ["intent:travel"]}),
                Some(KEY),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        asked.push(request_id);
    }
    let (status, body) = cluster
        .post(
            &format!("{url}/v1/feedback"),
            json!({"request_id": asked[0], "rating": 4, "labels": ["intent: "]}),
            Some(KEY),
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("labels")),
        "{body}"
    );
    let accuracy = until_it_knows(&cluster, &url, "travel").await;
    eprintln!("after the feedback dataset: held-out accuracy {accuracy:.3}");
    assert!(accuracy >= 0.8, "{accuracy}");
    asked.push(ask(&cluster, &url, TRAVEL[0]).await);

    // Read across partitions, in no set order: the augmenter's is the one it names.
    let (feedback, ingested): (Vec<_>, Vec<_>) =
        intents_datasets(cluster.events(EventKind::DatasetPrepared, 2).await)
            .into_iter()
            .partition(|d| d.name == "feedback-intents");
    let ([ingested], [feedback]) = (&ingested[..], &feedback[..]) else {
        panic!("one ingested and one feedback intents dataset: {ingested:?} {feedback:?}")
    };
    assert_eq!(ingested.train_examples + ingested.validation_examples, 23);
    assert_eq!(feedback.train_examples, TRAVEL.len() as i64 - 1);
    assert_eq!(feedback.source_collections.len(), TRAVEL.len() - 1);

    // Routed by what it learnt: the held-out billing request by the billing rule, the
    // held-out travel request by the travel rule (no seed intent is either).
    let routes = routed(&cluster, asked.len()).await;
    let route_of = |id: &str| routes.iter().find(|r| r.0 == id).cloned().unwrap();
    assert_eq!(
        route_of(&asked[0]),
        (asked[0].clone(), Some("billing".into()), "billing".into())
    );
    let last = asked.last().unwrap();
    assert_eq!(
        route_of(last),
        (last.clone(), Some("travel".into()), "travel".into())
    );

    // Three ingested documents forgotten (as the curator announces it): the classifier is
    // retrained without them.
    let (_, _, before) = classifier(&cluster, &url).await;
    let documents = String::from_utf8(cluster.store.get(&ingested.train).await.unwrap()).unwrap();
    let publisher = Publisher::new(&cluster.broker.bus(), "curator").unwrap();
    for line in documents.lines().take(3) {
        let document: Value = serde_json::from_str(line).unwrap();
        let forgotten = DocumentForgotten {
            header: EventHeader::root("curator"),
            document_id: document["id"].as_str().unwrap().to_string(),
            dataset_ids: vec![ingested.dataset_id],
        };
        publisher.publish(&forgotten.into()).await.unwrap();
    }
    quark_e2e::until(
        "three examples forgotten",
        Duration::from_secs(120),
        || async { classifier(&cluster, &url).await.2 == before - 3 },
    )
    .await;
    cluster.stop().await;
}
