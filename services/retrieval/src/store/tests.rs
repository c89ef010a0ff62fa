//! Against a real LanceDB directory. Vectors are made by hand so that the nearest passage to
//! each query is known: passage `i` points along axis `i` with a little of axis `i + 1`.

use super::*;

const DIMENSIONS: usize = 8;

fn axis_vector(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIMENSIONS];
    v[i % DIMENSIONS] = 1.0;
    v[(i + 1) % DIMENSIONS] = 0.2;
    v
}

fn passage(document: &str, i: usize, text: &str) -> Embedded {
    let passage = Passage {
        id: format!("{document}:{i}"),
        text: text.to_string(),
        source: format!("{document}.txt"),
        document_id: document.to_string(),
        dataset_id: "d1".to_string(),
        start: (i * 100) as u64,
        end: (i * 100 + text.len()) as u64,
    };
    Embedded {
        passage,
        vector: axis_vector(i),
    }
}

fn plays() -> Vec<Embedded> {
    [
        "The quality of mercy is not strained; it droppeth as the gentle rain from heaven.",
        "Now is the winter of our discontent made glorious summer by this sun of York.",
        "All the world's a stage, and all the men and women merely players.",
        "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar.",
    ]
    .iter()
    .enumerate()
    .map(|(i, text)| passage("plays", i, text))
    .collect()
}

async fn store(dir: &tempfile::TempDir, config: StoreConfig) -> KnowledgeStore {
    KnowledgeStore::open(dir.path().to_str().unwrap(), config)
        .await
        .unwrap()
}

fn search<'a>(text: &'a str, vector: &'a [f32], k: usize, mode: SearchMode) -> Search<'a> {
    Search {
        text,
        vector,
        k,
        mode,
    }
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.passage.id.as_str()).collect()
}

#[tokio::test]
async fn an_append_is_searchable_by_meaning_and_by_words() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, StoreConfig::default()).await;
    let appended = store.append("plays", &plays()).await.unwrap();
    assert_eq!((appended.rows_added, appended.rows_total), (4, 4));
    assert_eq!(
        store.indexed_columns("plays").await.unwrap(),
        vec![vec!["text".to_string()]]
    );

    let near_two = axis_vector(2);
    let hits = store
        .search("plays", &search("", &near_two, 2, SearchMode::Vector))
        .await
        .unwrap();
    assert_eq!(ids(&hits), ["plays:2", "plays:1"]);
    assert!((hits[0].score - 1.0).abs() < 1e-6, "{}", hits[0].score);
    assert_eq!(hits[0].passage.source, "plays.txt");
    assert_eq!((hits[0].passage.start, hits[0].passage.end), (200, 266));

    let words = search("Caesar ears", &near_two, 3, SearchMode::FullText);
    let hits = store.search("plays", &words).await.unwrap();
    assert_eq!(ids(&hits), ["plays:3"], "only one passage has either word");
    assert!(hits[0].score > 0.0);
}

#[tokio::test]
async fn hybrid_search_fuses_both_rankings() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, StoreConfig::default()).await;
    store.append("plays", &plays()).await.unwrap();
    // By meaning the ranking is 0, 1, 2, 3 (the query leans away from axes 2 and 3); by words
    // only passage 3 has "Caesar". Fused, 3 (ranks 4 and 1) beats 0 (rank 1 once).
    let mut query_vector = axis_vector(0);
    query_vector[3] = -0.1;
    let by_meaning = search("", &query_vector, 4, SearchMode::Vector);
    let ranked = store.search("plays", &by_meaning).await.unwrap();
    assert_eq!(ids(&ranked), ["plays:0", "plays:1", "plays:2", "plays:3"]);

    let query = search("Caesar", &query_vector, 2, SearchMode::Hybrid);
    let hits = store.search("plays", &query).await.unwrap();
    assert_eq!(ids(&hits), ["plays:3", "plays:0"]);
    let rank = |r: f64| 1.0 / (fusion::K + r);
    assert!(
        (hits[0].score - (rank(4.0) + rank(1.0))).abs() < 1e-12,
        "{}",
        hits[0].score
    );
    assert!(
        (hits[1].score - rank(1.0)).abs() < 1e-12,
        "{}",
        hits[1].score
    );
}

#[tokio::test]
async fn a_redelivered_append_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, StoreConfig::default()).await;
    let first = store.append("plays", &plays()).await.unwrap();
    let again = store.append("plays", &plays()).await.unwrap();
    assert_eq!((again.rows_added, again.rows_total), (0, 4));
    assert_eq!(again.version, first.version, "nothing was written");

    let mut more = plays();
    more.push(passage(
        "plays",
        4,
        "To be, or not to be, that is the question.",
    ));
    let grown = store.append("plays", &more).await.unwrap();
    assert_eq!((grown.rows_added, grown.rows_total), (1, 5));
    assert!(grown.version > first.version);
}

#[tokio::test]
async fn a_large_table_gets_a_vector_index_and_appends_are_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        vector_index_min_rows: 350,
        ..StoreConfig::default()
    };
    let store = store(&dir, config).await;
    let batch = |from: usize| -> Vec<Embedded> {
        (from..from + 100)
            .map(|i| {
                let mut p = passage("many", i, &format!("passage number {i} of many"));
                // Spread the vectors so the index has something to cluster.
                p.vector = (0..DIMENSIONS)
                    .map(|d| ((i * 7 + d * 13) % 17) as f32 + 0.5)
                    .collect();
                p
            })
            .collect()
    };
    for from in [0, 100, 200] {
        store.append("many", &batch(from)).await.unwrap();
        let columns = store.indexed_columns("many").await.unwrap();
        assert!(
            !columns.contains(&vec!["vector".to_string()]),
            "{from}: {columns:?}"
        );
    }
    store.append("many", &batch(300)).await.unwrap();
    let columns = store.indexed_columns("many").await.unwrap();
    assert!(columns.contains(&vec!["vector".to_string()]), "{columns:?}");
    assert!(columns.contains(&vec!["text".to_string()]), "{columns:?}");
    let table = store.table("many").await.unwrap();
    let fragments = table
        .as_native()
        .unwrap()
        .manifest()
        .await
        .unwrap()
        .fragments
        .len();
    // Without compaction each append leaves a file of its own.
    assert!(fragments <= 2, "four appends left {fragments} files");

    // Both the indexed rows and those appended after the index was built are found.
    let words = search("number 350", &[0.0; DIMENSIONS], 1, SearchMode::FullText);
    assert_eq!(
        ids(&store.search("many", &words).await.unwrap()),
        ["many:350"]
    );
    let target = batch(0)[42].vector.clone();
    let hits = store
        .search("many", &search("", &target, 1, SearchMode::Vector))
        .await
        .unwrap();
    assert!(hits[0].score > 0.999, "{hits:?}");
}

#[tokio::test]
async fn forgetting_a_document_removes_it_from_every_index_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, StoreConfig::default()).await;
    store.append("plays", &plays()).await.unwrap();
    let other = vec![passage("notes", 5, "Caesar was ambitious, said Brutus.")];
    store.append("plays", &other).await.unwrap();
    store.append("notes", &other).await.unwrap();

    let removed = store.forget("notes").await.unwrap();
    let mut removed_sorted = removed.clone();
    removed_sorted.sort();
    assert_eq!(
        removed_sorted,
        [("notes".to_string(), 1), ("plays".to_string(), 1)]
    );
    let words = search("Caesar", &[0.0; DIMENSIONS], 5, SearchMode::FullText);
    assert_eq!(
        ids(&store.search("plays", &words).await.unwrap()),
        ["plays:3"]
    );
    assert_eq!(store.rows("notes").await.unwrap(), 0);

    // No older version still holds the text: the table can no longer go back to it.
    let table = store.table("plays").await.unwrap();
    assert_eq!(table.list_versions().await.unwrap().len(), 1);
    assert_eq!(
        store.forget("notes").await.unwrap(),
        vec![],
        "nothing left to forget"
    );
}

#[tokio::test]
async fn bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, StoreConfig::default()).await;
    let v = axis_vector(0);
    let unknown = store
        .search("nowhere", &search("x", &v, 1, SearchMode::Hybrid))
        .await;
    assert!(matches!(unknown, Err(StoreError::UnknownIndex(ref n)) if n == "nowhere"));
    assert!(!store.exists("nowhere").await.unwrap());
    let bad_name = store.append("../escape", &plays()).await;
    assert!(matches!(bad_name, Err(StoreError::InvalidName(_))));

    store.append("plays", &plays()).await.unwrap();
    assert!(store.exists("plays").await.unwrap());
    let long = "word ".repeat(500);
    let too_long = store
        .search("plays", &search(&long, &v, 1, SearchMode::Hybrid))
        .await;
    let message = too_long.unwrap_err().to_string();
    assert_eq!(
        message,
        "the query is 2500 characters; at most 2000 are accepted"
    );
    let zero = store
        .search("plays", &search("x", &v, 0, SearchMode::Vector))
        .await;
    assert!(matches!(zero, Err(StoreError::BadK { got: 0, limit: 100 })));

    let mut short = passage("plays", 9, "A passage of the wrong width.");
    short.vector.pop();
    let wrong = store
        .append("plays", &[short])
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(wrong, "index \"plays\" holds 8-dimensional vectors; got 7");
    assert_eq!(store.rows("plays").await.unwrap(), 4, "nothing was written");

    let nothing = store.append("empty", &[]).await.unwrap();
    assert_eq!((nothing.rows_added, nothing.rows_total), (0, 0));
    assert!(
        store.indexes().await.unwrap() == ["plays"],
        "no table for nothing"
    );
}

#[tokio::test]
async fn a_corrupt_table_is_a_clear_error_and_other_indexes_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, StoreConfig::default()).await;
    store.append("plays", &plays()).await.unwrap();
    store
        .append("notes", &[passage("notes", 1, "Notes on the plays.")])
        .await
        .unwrap();
    // Clobber every manifest of one table.
    let versions = dir.path().join("notes.lance").join("_versions");
    for entry in std::fs::read_dir(&versions).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a manifest").unwrap();
    }
    let v = axis_vector(1);
    let broken = store
        .search("notes", &search("notes", &v, 1, SearchMode::Hybrid))
        .await;
    let message = broken.unwrap_err().to_string();
    assert!(
        message.starts_with("index \"notes\" could not be read: "),
        "{message}"
    );
    let fine = store
        .search("plays", &search("", &v, 1, SearchMode::Vector))
        .await
        .unwrap();
    assert_eq!(ids(&fine), ["plays:1"]);
}

#[test]
fn search_modes_parse_from_their_names() {
    assert_eq!("hybrid".parse(), Ok(SearchMode::Hybrid));
    assert_eq!("full_text".parse(), Ok(SearchMode::FullText));
    assert_eq!("vector".parse(), Ok(SearchMode::Vector));
    let err = "fuzzy".parse::<SearchMode>().unwrap_err();
    assert_eq!(
        err,
        "unknown search mode \"fuzzy\": vector, full_text or hybrid"
    );
}

/// The same store on S3-compatible object storage (moto's server, a real S3 protocol):
/// appends, the three searches and forgetting behave as in a directory, and a second
/// connection (another host) reads what the first wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_on_s3_compatible_storage_appends_searches_and_forgets() {
    let s3 = quark_runtime::artifacts::testing::S3Server::start();
    s3.create_bucket("knowledge");
    let config = StoreConfig {
        storage_options: s3.storage_options(),
        ..StoreConfig::default()
    };
    let uri = "s3://knowledge/indexes";
    let writer = KnowledgeStore::open(uri, config.clone()).await.unwrap();
    let appended = writer.append("plays", &plays()).await.unwrap();
    assert_eq!((appended.rows_added, appended.rows_total), (4, 4));
    assert_eq!(
        writer.append("plays", &plays()).await.unwrap().rows_added,
        0
    );
    let other = vec![passage("notes", 5, "Caesar was ambitious, said Brutus.")];
    writer.append("plays", &other).await.unwrap();

    let reader = KnowledgeStore::open(uri, config).await.unwrap();
    assert_eq!(reader.indexes().await.unwrap(), ["plays"]);
    let mercy = axis_vector(0);
    for mode in [SearchMode::Vector, SearchMode::FullText, SearchMode::Hybrid] {
        let hits = reader
            .search("plays", &search("mercy rain", &mercy, 1, mode))
            .await
            .unwrap();
        assert_eq!(ids(&hits), ["plays:0"], "{mode:?}");
    }

    assert_eq!(
        writer.forget("notes").await.unwrap(),
        [("plays".to_string(), 1)]
    );
    let caesar = search("Caesar", &[0.0; DIMENSIONS], 5, SearchMode::FullText);
    assert_eq!(
        ids(&reader.search("plays", &caesar).await.unwrap()),
        ["plays:3"]
    );
    let table = reader.table("plays").await.unwrap();
    assert_eq!(table.list_versions().await.unwrap().len(), 1);
}
