//! `quark-bench-retrieval`: retrieval quality and speed on a labelled set of the plays.
//!
//!   quark-bench-retrieval passages MODEL DIR OUT.jsonl   the plays under DIR (`*_gut.txt`) cut as the
//!                                                        indexer cuts them (its default 128
//!                                                        encoder tokens, overlap 32)
//!   quark-bench-retrieval queries PASSAGES N SEED OUT    N known-item queries (below)
//!   quark-bench-retrieval run MODEL PASSAGES QUERIES DIR embeds and indexes the passages into
//!                                                        a LanceDB table in DIR, then answers
//!                                                        every query by vector, BM25 and
//!                                                        hybrid search; JSON out
//!
//! A known-item query is five words of one passage, none of them among the corpus's 300
//! commonest words nor in the passages before and after it (which overlap it), in the order
//! they appear: the passage it was drawn from is the one answer. Hybrid search asks each
//! ranker for `candidates_per_hit` × k candidates (the store's default, 4, or
//! `QUARK_CANDIDATES_PER_HIT`). The threads are libtorch's,
//! from `QUARK_THREADS` (default 2). Timers: the embedding of every passage; the append (the
//! write, the BM25 index and the compaction); each query from its text to its hits.

use quark_ml::encoder::SentenceEncoder;
use quark_retrieval::chunk::{ChunkConfig, chunks};
use quark_retrieval::retriever::Retriever;
use quark_retrieval::store::{Embedded, Passage, SearchMode, StoreConfig};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

const CHUNKS: ChunkConfig = ChunkConfig {
    size: 128,
    overlap: 32,
};
const QUERY_WORDS: usize = 5;
const COMMON_WORDS: usize = 300;
/// Hits fetched per query: recall@1, recall@5 and the reciprocal rank within 10.
const K: usize = 10;

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_lines(path: &Path, rows: &[Value]) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for row in rows {
        serde_json::to_writer(&mut out, row).unwrap();
        writeln!(out).unwrap();
    }
}

fn passages(model: &Path, dir: &Path, out: &Path) {
    let encoder = SentenceEncoder::load(model, tch::Device::Cpu).unwrap();
    let measure = |text: &str| encoder.token_count(text).unwrap();
    let mut files = Vec::new();
    quark_e2e::text_files(dir, &mut files);
    let mut rows = Vec::new();
    // One edition of each play (the package also holds the folio's, `*_gut_f.txt`, whose
    // passages would be near twins of these and blur which one a query was drawn from).
    files.retain(|f| f.to_string_lossy().ends_with("_gut.txt"));
    for file in files {
        let document = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for chunk in chunks(&text, &CHUNKS, &measure) {
            let id = format!("{document}@{}-{}", chunk.range.start, chunk.range.end);
            rows.push(json!({"id": id, "document_id": document, "text": chunk.text}));
        }
    }
    write_lines(out, &rows);
    println!("{}", json!({"passages": rows.len(), "chunks": CHUNKS}));
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| w.len() >= 5)
        .map(str::to_lowercase)
        .collect()
}

fn queries(passages: &Path, n: usize, seed: u64, out: &Path) {
    let rows = read_lines(passages);
    let texts: Vec<Vec<String>> = rows
        .iter()
        .map(|r| words(r["text"].as_str().unwrap()))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in texts.iter().flatten() {
        *counts.entry(word).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let common: HashSet<&str> = by_count.iter().take(COMMON_WORDS).map(|w| w.0).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut queries = Vec::new();
    while queries.len() < n && !order.is_empty() {
        let i = order.swap_remove(rng.random_range(0..order.len()));
        let same_document =
            |j: usize| rows.get(j).map(|r| &r["document_id"]) == Some(&rows[i]["document_id"]);
        let neighbours: HashSet<&String> = [i.wrapping_sub(1), i + 1]
            .into_iter()
            .filter(|&j| same_document(j))
            .flat_map(|j| &texts[j])
            .collect();
        let mut candidates: Vec<&String> = Vec::new();
        for word in &texts[i] {
            if !common.contains(word.as_str())
                && !neighbours.contains(word)
                && !candidates.contains(&word)
            {
                candidates.push(word);
            }
        }
        if candidates.len() < QUERY_WORDS {
            continue;
        }
        let mut picked: Vec<&String> = candidates
            .choose_multiple(&mut rng, QUERY_WORDS)
            .copied()
            .collect();
        picked.sort_by_key(|w| candidates.iter().position(|c| c == w));
        let query: Vec<&str> = picked.iter().map(|w| w.as_str()).collect();
        queries.push(json!({"query": query.join(" "), "passage_id": rows[i]["id"]}));
    }
    write_lines(out, &queries);
    println!(
        "{}",
        json!({"queries": queries.len(), "seed": seed, "words": QUERY_WORDS, "common_words_excluded": COMMON_WORDS})
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(model: &Path, passages: &Path, queries: &Path, dir: &Path) {
    let threads: i32 = std::env::var("QUARK_THREADS").map_or(2, |t| t.parse().unwrap());
    tch::set_num_threads(threads);
    let rows = read_lines(passages);
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    // Exact vector search, as the Python side's table without a vector index does; hybrid
    // search's candidates per ranker from `QUARK_CANDIDATES_PER_HIT` (LanceDB's Python
    // hybrid search asks each ranker for k: 1).
    let defaults = StoreConfig::default();
    let config = StoreConfig {
        vector_index_min_rows: usize::MAX,
        candidates_per_hit: std::env::var("QUARK_CANDIDATES_PER_HIT")
            .map_or(defaults.candidates_per_hit, |n| n.parse().unwrap()),
        ..defaults
    };
    let candidates_per_hit = config.candidates_per_hit;
    let retriever = Retriever::open(dir.to_str().unwrap(), model, config, 32)
        .await
        .unwrap();
    retriever.dimension().unwrap();
    let started = Instant::now();
    let vectors = retriever.encode(&texts).unwrap();
    let embed_s = started.elapsed().as_secs_f64();
    let embedded: Vec<Embedded> = rows
        .iter()
        .zip(vectors)
        .map(|(r, vector)| {
            let passage = Passage {
                id: r["id"].as_str().unwrap().to_string(),
                text: r["text"].as_str().unwrap().to_string(),
                source: String::new(),
                document_id: r["document_id"].as_str().unwrap().to_string(),
                dataset_id: String::new(),
                start: 0,
                end: 0,
            };
            Embedded { passage, vector }
        })
        .collect();
    let started = Instant::now();
    retriever.store().append("plays", &embedded).await.unwrap();
    let append_s = started.elapsed().as_secs_f64();
    let queries = read_lines(queries);
    let mut modes = serde_json::Map::new();
    for mode in [SearchMode::Vector, SearchMode::FullText, SearchMode::Hybrid] {
        let (mut ranks, mut millis) = (Vec::new(), Vec::new());
        for q in &queries {
            let started = Instant::now();
            let hits = retriever
                .search("plays", q["query"].as_str().unwrap(), K, mode)
                .await
                .unwrap();
            millis.push(started.elapsed().as_secs_f64() * 1e3);
            let target = q["passage_id"].as_str().unwrap();
            ranks.push(hits.iter().position(|h| h.passage.id == target));
        }
        millis.sort_by(f64::total_cmp);
        let n = ranks.len() as f64;
        let within =
            |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r < k)).count() as f64 / n;
        let mrr = ranks
            .iter()
            .map(|r| r.map_or(0.0, |r| 1.0 / (r as f64 + 1.0)))
            .sum::<f64>()
            / n;
        let name = serde_json::to_value(mode)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        modes.insert(
            name,
            json!({"recall_1": within(1), "recall_5": within(5), "mrr_10": mrr,
            "p50_ms": percentile(&millis, 0.5), "p99_ms": percentile(&millis, 0.99)}),
        );
    }
    println!(
        "{}",
        json!({"side": "quark", "passages": rows.len(), "queries": queries.len(), "threads": threads,
        "embed_s": embed_s, "chunks_per_s": rows.len() as f64 / embed_s, "append_s": append_s,
        "candidates_per_hit": candidates_per_hit, "modes": modes})
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = |i: usize| Path::new(&args[i]);
    match args.get(1).map(String::as_str) {
        Some("passages") => passages(path(2), path(3), path(4)),
        Some("queries") => queries(
            path(2),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            path(5),
        ),
        Some("run") => tokio::runtime::Runtime::new().unwrap().block_on(run(
            path(2),
            path(3),
            path(4),
            path(5),
        )),
        _ => {
            eprintln!(
                "usage: quark-bench-retrieval passages MODEL DIR OUT | queries PASSAGES N SEED OUT | run MODEL PASSAGES QUERIES DIR"
            );
            std::process::exit(2);
        }
    }
}
