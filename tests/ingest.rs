//! `quark ingest` and the curator service over the real broker: a directory becomes
//! data.collected, the curator turns it into dataset.prepared with its stats and artifacts,
//! and a second ingest is deduplicated against what the first one kept.

use quark_e2e::*;
use quark_events::{Event, EventKind};
use std::path::Path;
use std::process::Command;

const ESSAY: &str = "It was a bright cold day in April, and the clocks were striking thirteen. \
Winston Smith, his chin nuzzled into his breast in an effort to escape the vile wind, slipped \
quickly through the glass doors of Victory Mansions, though not quickly enough to prevent a \
swirl of gritty dust from entering along with him. The hallway smelt of boiled cabbage and old \
rag mats. At one end of it a coloured poster, too large for indoor display, had been tacked to \
the wall.";

const SEA: &str = "Call me Ishmael. Some years ago, never mind how long precisely, having little \
or no money in my purse, and nothing particular to interest me on shore, I thought I would sail \
about a little and see the watery part of the world. It is a way I have of driving off the \
spleen and regulating the circulation. Whenever I find myself growing grim about the mouth, \
I account it high time to get to sea as soon as I can.";

fn quark(data_dir: &Path, broker: &TestBroker, args: &[&str]) -> Command {
    let mut command = Command::new(bin("quark"));
    command
        .args(args)
        .env("QUARK__DATA_DIR", data_dir)
        .env("QUARK__BUS__BROKERS", &broker.address)
        .env("QUARK__TELEMETRY__LOG", "warn");
    command
}

/// Runs `quark ingest dir [options]`, which must succeed; returns what it printed.
fn ingest(data_dir: &Path, broker: &TestBroker, dir: &Path, options: &[&str]) -> String {
    let args = [&["ingest", dir.to_str().unwrap()], options].concat();
    let output = quark(data_dir, broker, &args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn dataset_events(broker: &TestBroker, count: usize) -> Vec<quark_events::DatasetPrepared> {
    decode_all(&read_topic(
        &broker.bus(),
        EventKind::DatasetPrepared.topic(),
        count,
    ))
    .into_iter()
    .map(|e| match e {
        Event::DatasetPrepared(d) => d,
        other => panic!("{other:?}"),
    })
    .collect()
}

#[test]
fn ingested_directories_become_curated_datasets_deduplicated_across_ingests() {
    let broker = TestBroker::start();
    let data = tempfile::tempdir().unwrap();
    let first = data.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(
        first.join("essay.txt"),
        format!("{ESSAY} Contact winston@minitrue.co.uk."),
    )
    .unwrap();
    std::fs::write(first.join("essay_copy.md"), ESSAY).unwrap();
    std::fs::write(
        first.join("sea.html"),
        format!("<html><body><nav>Home</nav><p>{SEA}</p></body></html>"),
    )
    .unwrap();
    std::fs::write(first.join("image.png"), [0u8; 4]).unwrap();

    let stdout = ingest(data.path(), &broker, &first, &[]);
    assert!(
        stdout.contains(": 3 documents,") && stdout.contains("1 skipped"),
        "{stdout}"
    );

    let _curator = Process(
        quark(data.path(), &broker, &["run", "curator"])
            .spawn()
            .unwrap(),
    );
    let dataset = dataset_events(&broker, 1).remove(0);
    assert_eq!(dataset.stats["documents"], 3);
    assert_eq!(dataset.stats["kept"], 2, "{:?}", dataset.stats);
    assert_eq!(
        dataset.stats["rejected:duplicate:near"]
            + dataset.stats.get("rejected:duplicate:exact").unwrap_or(&0),
        1
    );
    assert_eq!(dataset.stats["pii:email"], 1);
    assert_eq!(dataset.train_examples + dataset.validation_examples, 2);
    // A tokenizer trained on the kept text, naming the dataset.
    let tokenizers: Vec<_> = decode_all(&read_topic(
        &broker.bus(),
        EventKind::TokenizerTrained.topic(),
        1,
    ))
    .into_iter()
    .map(|e| match e {
        Event::TokenizerTrained(t) => t,
        other => panic!("{other:?}"),
    })
    .collect();
    assert_eq!(tokenizers[0].dataset_id, dataset.dataset_id);
    assert!(tokenizers[0].vocab_size > 256 + 4 && tokenizers[0].vocab_size <= 8192);
    assert_eq!(tokenizers[0].special_tokens[0], "<|endoftext|>");
    let tokenizer_json =
        std::fs::read_to_string(tokenizers[0].artifact.uri.strip_prefix("file://").unwrap())
            .unwrap();
    assert!(
        tokenizer_json.contains("\"type\": \"BPE\"") || tokenizer_json.contains("\"type\":\"BPE\"")
    );
    // The dataset's artifacts are in the store: scrubbed text, and the rejected copy with its reason.
    let artifacts = data.path().join("artifacts");
    let read = |artifact: &quark_events::Artifact| {
        let path = artifact.uri.strip_prefix("file://").unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(path.starts_with(artifacts.to_str().unwrap()));
        text
    };
    let kept = read(&dataset.train) + &read(dataset.validation.as_ref().unwrap());
    assert!(
        kept.contains("Contact <EMAIL>.") && !kept.contains("winston@"),
        "{kept}"
    );
    assert!(kept.contains("Call me Ishmael") && !kept.contains("Home"));
    let rejects = read(dataset.rejects.as_ref().unwrap());
    assert!(
        rejects.contains("essay_copy.md") && rejects.contains("\"reason\":\"duplicate:"),
        "{rejects}"
    );

    // A second ingest: a lightly edited copy of the sea text is caught against the first dataset.
    let second = data.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(
        second.join("sea-again.txt"),
        SEA.replace(
            "never mind how long precisely",
            "never mind how long exactly",
        ),
    )
    .unwrap();
    std::fs::write(
        second.join("new.txt"),
        ESSAY
            .replace("April", "May")
            .replace("thirteen", "twelve")
            .replace("cabbage", "potatoes")
            .replace("Winston Smith", "Julia")
            .replace("Victory Mansions", "the tower")
            .replace("poster", "painting")
            .replace("hallway", "corridor"),
    )
    .unwrap();
    ingest(data.path(), &broker, &second, &[]);
    // Partitions do not order the two events: find the second by its source.
    let datasets = dataset_events(&broker, 2);
    let again = datasets
        .iter()
        .find(|d| d.name.ends_with("second"))
        .unwrap();
    assert_eq!(again.stats["documents"], 2);
    assert_eq!(
        again.stats["rejected:duplicate:near"], 1,
        "{:?}",
        again.stats
    );
    assert_eq!(again.stats["kept"], 1);
    assert_eq!(again.source_collections.len(), 1);
    assert_ne!(again.dataset_id, dataset.dataset_id);
    assert_ne!(again.source_collections, dataset.source_collections);

    // Conversations for fine-tuning: records kept whole, deduplicated and scrubbed, no prose rules.
    let sft = data.path().join("sft");
    std::fs::create_dir_all(&sft).unwrap();
    let chat = |q: &str, a: &str| {
        serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string()
    };
    std::fs::write(
        sft.join("chats.jsonl"),
        [
            chat(
                "What is the capital of France?",
                "Paris is the capital of France.",
            ),
            chat(
                "What is the capital of France?",
                "Paris is the capital of France.",
            ),
            chat(
                "Who wrote Hamlet? Mail me at reader@gmail.com",
                "William Shakespeare wrote Hamlet.",
            ),
            "not json".to_string(),
        ]
        .join("\n"),
    )
    .unwrap();
    ingest(data.path(), &broker, &sft, &["--kind", "sft"]);
    let datasets = dataset_events(&broker, 3);
    let tuned = datasets.iter().find(|d| d.name.ends_with("sft")).unwrap();
    assert_eq!(tuned.kind, quark_events::DatasetKind::Sft);
    assert_eq!(tuned.stats["documents"], 3, "{:?}", tuned.stats);
    assert_eq!(tuned.stats["kept"], 2);
    assert_eq!(tuned.stats["rejected:duplicate:exact"], 1);
    let records = read(&tuned.train) + &read(tuned.validation.as_ref().unwrap());
    let line: serde_json::Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    let first: serde_json::Value = serde_json::from_str(line["text"].as_str().unwrap()).unwrap();
    assert_eq!(first["messages"][1]["role"], "assistant");
    assert!(
        records.contains("<EMAIL>") && !records.contains("reader@gmail.com"),
        "{records}"
    );

    // Nothing to ingest is an error that says why.
    let empty = data.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("blob.bin"), [1u8, 2, 3]).unwrap();
    let output = quark(data.path(), &broker, &["ingest", empty.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing to ingest"));
}
