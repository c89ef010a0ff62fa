//! `quark-bench-curate`: curation figures on real text.
//!
//!   quark-bench-curate shakespeare DIR        near-duplicate pairs among every .txt under DIR
//!   quark-bench-curate corpus DIR OUT.jsonl   the dedup benchmark corpus (see `corpus`)
//!   quark-bench-curate dedup IN_DIR OUT_DIR   MinHash dedup end to end, as datatrove runs it:
//!                                             from IN_DIR's JSON-lines files to OUT_DIR's
//!                                             kept.jsonl and removed.jsonl, on rayon's threads
//!   quark-bench-curate dedup-memory IN.jsonl OUT   the same dedup timed in memory only (the
//!                                             corpus read first): removed ids to OUT
//!   quark-bench-curate pipeline IN.jsonl      the whole curation: MB/s per core, peak memory

use quark_curate::dedup::DedupIndex;
use quark_curate::filters::Lexicon;
use quark_curate::minhash::{LshIndex, MinHashConfig, MinHasher, jaccard, shingles};
use quark_curate::pipeline::{CurateConfig, Curator, Document, Outcome};
use quark_curate::store::{documents, read_documents};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use quark_e2e::text_files;

fn name(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap().display().to_string()
}

/// Every pair the index calls near duplicates, with estimated and exact Jaccard, and the
/// most similar pairs it does not flag.
fn shakespeare(dir: &Path) {
    let mut files = vec![];
    text_files(dir, &mut files);
    let config = MinHashConfig::default();
    let hasher = MinHasher::new(config);
    let texts: Vec<String> = files
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect();
    let sets: Vec<Vec<u64>> = texts
        .iter()
        .map(|t| shingles(t, config.shingle, config.seed))
        .collect();
    let mut index = LshIndex::new(config);
    let mut flagged = vec![];
    for (i, text) in texts.iter().enumerate() {
        let signature = hasher.signature(text);
        for m in index.matches(&signature) {
            let j: usize = m.id.parse().unwrap();
            flagged.push((j, i, m.estimated_jaccard, jaccard(&sets[j], &sets[i])));
        }
        index.insert(i.to_string(), signature);
    }
    println!(
        "{} text files, {} MB; MinHash word {}-grams, {} bands × {} rows, threshold {}",
        files.len(),
        texts.iter().map(String::len).sum::<usize>() / 1_000_000,
        config.shingle,
        config.bands,
        config.rows,
        config.threshold
    );
    println!("near-duplicate pairs found: {}", flagged.len());
    for (a, b, estimated, exact) in &flagged {
        println!(
            "  {:<45} {:<45} estimated {estimated:.3} exact {exact:.3}",
            name(&files[*a], dir),
            name(&files[*b], dir)
        );
    }
    let mut pairs = vec![];
    for a in 0..files.len() {
        for b in a + 1..files.len() {
            if !flagged.iter().any(|(x, y, ..)| (*x, *y) == (a, b)) {
                pairs.push((jaccard(&sets[a], &sets[b]), a, b));
            }
        }
    }
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
    println!("most similar pairs not flagged (exact Jaccard of word 5-gram sets):");
    for (exact, a, b) in pairs.iter().take(48) {
        println!(
            "  {:<45} {:<45} exact {exact:.3}",
            name(&files[*a], dir),
            name(&files[*b], dir)
        );
    }
}

/// The plays cut into documents of 40 lines, plus one in five of them again with about 1 % of
/// their words replaced: near duplicates whose originals are known.
fn corpus(dir: &Path, out: &Path) {
    let mut files = vec![];
    text_files(dir, &mut files);
    let mut rng = StdRng::seed_from_u64(1);
    let mut lines = vec![];
    for file in &files {
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
        let all: Vec<&str> = text.lines().collect();
        for (i, chunk) in all.chunks(40).enumerate() {
            let id = format!("{}#{i}", name(file, dir));
            let text = chunk.join("\n");
            if text.split_whitespace().count() < 30 {
                continue;
            }
            if rng.random_range(0..5) == 0 {
                let edited: Vec<String> = text
                    .split(' ')
                    .map(|w| {
                        if rng.random_range(0..100) < 1 {
                            "forsooth".to_string()
                        } else {
                            w.to_string()
                        }
                    })
                    .collect();
                lines.push(
                    serde_json::json!({"id": format!("{id}~copy"), "text": edited.join(" ")})
                        .to_string(),
                );
            }
            lines.push(serde_json::json!({"id": id, "text": text}).to_string());
        }
    }
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
    println!("{} documents in {}", lines.len(), out.display());
}

fn peak_memory_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn run(input: &Path, config: CurateConfig, removed_out: Option<&Path>) {
    let documents = read_documents(input).unwrap();
    let bytes: usize = documents.iter().map(|d| d.text.len()).sum();
    let count = documents.len();
    let cores = rayon::current_num_threads();
    let mut curator = Curator::new(
        config,
        DedupIndex::in_memory(MinHashConfig::default()),
        Box::new(Lexicon::english()),
    );
    let started = Instant::now();
    let mut removed = vec![];
    let mut batch: Vec<Document> = vec![];
    let mut documents = documents.into_iter();
    loop {
        batch.extend(documents.by_ref().take(1000));
        if batch.is_empty() {
            break;
        }
        for outcome in curator.curate(std::mem::take(&mut batch)) {
            if let Outcome::Rejected { document, .. } = outcome {
                removed.push(document.id);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(out) = removed_out {
        removed.sort();
        std::fs::write(out, removed.join("\n") + "\n").unwrap();
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "quark",
            "documents": count,
            "seconds": seconds,
            "documents_per_s": count as f64 / seconds,
            "mb_per_s_per_core": bytes as f64 / 1e6 / seconds / cores as f64,
            "cores": cores,
            "peak_memory_mb": peak_memory_mb(),
            "removed": removed.len(),
            "stats": curator.stats.rejected,
        })
    );
}

fn dedup_only() -> CurateConfig {
    CurateConfig {
        quality: None,
        max_toxicity: None,
        languages: vec![],
        scrub_pii: false,
        exact_dedup: false,
        near_dedup: true,
        samples_per_reason: 0,
    }
}

/// Timed from the first read to the last write flushed: every `.jsonl` of `input` in name
/// order, in batches of 1,000, each document written to `output`'s kept.jsonl or removed.jsonl.
fn dedup_files(input: &Path, output: &Path) {
    let started = Instant::now();
    let mut files: Vec<_> = std::fs::read_dir(input)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    std::fs::create_dir_all(output).unwrap();
    let open =
        |name: &str| std::io::BufWriter::new(std::fs::File::create(output.join(name)).unwrap());
    let (mut kept, mut removed) = (open("kept.jsonl"), open("removed.jsonl"));
    let config = MinHashConfig::default();
    let index = DedupIndex::in_memory(config);
    let mut curator = Curator::new(dedup_only(), index, Box::new(Lexicon::english()));
    let (mut count, mut dropped) = (0, 0);
    for file in &files {
        let mut read = documents(file).unwrap().map(Result::unwrap).peekable();
        while read.peek().is_some() {
            let batch: Vec<Document> = read.by_ref().take(1000).collect();
            count += batch.len();
            for outcome in curator.curate(batch) {
                let (out, document) = match outcome {
                    Outcome::Kept { document } => (&mut kept, document),
                    Outcome::Rejected { document, .. } => {
                        dropped += 1;
                        (&mut removed, document)
                    }
                };
                serde_json::to_writer(&mut *out, &document).unwrap();
                out.write_all(b"\n").unwrap();
            }
        }
    }
    kept.flush().unwrap();
    removed.flush().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "impl": "quark",
            "settings": {
                "timed": "read JSON lines from disk → dedup → kept.jsonl and removed.jsonl written",
                "files": files.len(),
                "threads": rayon::current_num_threads(),
                "shingles": format!("word {}-grams of lower-cased words, punctuation dropped", config.shingle),
                "hashes": format!("{} bands × {} rows, duplicate at estimated Jaccard ≥ {}", config.bands, config.rows, config.threshold),
            },
            "documents": count,
            "seconds": seconds,
            "documents_per_s": count as f64 / seconds,
            "removed": dropped,
            "peak_memory_mb": peak_memory_mb(),
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        Path::new(
            args.get(i)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("usage: see the file's header")),
        )
    };
    match args.get(1).map(String::as_str) {
        Some("shakespeare") => shakespeare(arg(2)),
        Some("corpus") => corpus(arg(2), arg(3)),
        Some("dedup") => dedup_files(arg(2), arg(3)),
        Some("dedup-memory") => run(arg(2), dedup_only(), Some(arg(3))),
        Some("pipeline") => run(
            arg(2),
            CurateConfig {
                quality: Some(quark_curate::filters::QualityConfig {
                    min_words: 20,
                    ..Default::default()
                }),
                ..CurateConfig::default()
            },
            None,
        ),
        _ => panic!(
            "usage: quark-bench-curate shakespeare DIR | corpus DIR OUT | dedup IN_DIR OUT_DIR | dedup-memory IN OUT | pipeline IN"
        ),
    }
}
