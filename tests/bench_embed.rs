//! `quark-bench-embed`: the sentence encoder's throughput on real passages.
//!
//!   quark-bench-embed chunks DIR OUT.jsonl            passages of the .txt plays under DIR
//!   quark-bench-embed embed MODEL IN.jsonl OUT.f32 B  embeds IN's passages B at a time; the
//!                                                     vectors to OUT (f32, little-endian, row
//!                                                     after row), passages/s as JSON
//!
//! The threads are libtorch's, set from `QUARK_THREADS` (default 2); the timer is around the
//! encoding alone: the model is loaded and the passages read before it starts.

use quark_e2e::text_files;
use quark_ml::encoder::SentenceEncoder;
use quark_retrieval::chunk::{ChunkConfig, chunks, words};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Passages of at most 100 words (overlap 20), as an indexer would cut the plays.
const PASSAGES: ChunkConfig = ChunkConfig {
    size: 100,
    overlap: 20,
};

fn passages(dir: &Path, out: &Path) {
    let mut files = Vec::new();
    text_files(dir, &mut files);
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    let mut count = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for chunk in chunks(&text, &PASSAGES, &words) {
            serde_json::to_writer(&mut writer, &serde_json::json!({"text": chunk.text})).unwrap();
            writeln!(writer).unwrap();
            count += 1;
        }
    }
    println!(
        "{}",
        serde_json::json!({"passages": count, "size_words": PASSAGES.size, "overlap_words": PASSAGES.overlap})
    );
}

fn embed(model: &Path, input: &Path, out: &Path, batch: usize) {
    let threads: i32 = std::env::var("QUARK_THREADS").map_or(2, |t| t.parse().unwrap());
    tch::set_num_threads(threads);
    let texts: Vec<String> = std::fs::read_to_string(input)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoder = SentenceEncoder::load(model, tch::Device::Cpu).unwrap();
    let started = Instant::now();
    let vectors = encoder.encode(&refs, batch).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let bytes: Vec<u8> = vectors
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(out, bytes).unwrap();
    println!(
        "{}",
        serde_json::json!({"side": "quark", "passages": texts.len(), "seconds": seconds,
            "passages_per_s": texts.len() as f64 / seconds, "batch_size": batch, "threads": threads})
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("chunks") => passages(Path::new(&args[2]), Path::new(&args[3])),
        Some("embed") => embed(
            Path::new(&args[2]),
            Path::new(&args[3]),
            Path::new(&args[4]),
            args[5].parse().unwrap(),
        ),
        _ => {
            eprintln!(
                "usage: quark-bench-embed chunks DIR OUT.jsonl | embed MODEL IN.jsonl OUT.f32 BATCH"
            );
            std::process::exit(2);
        }
    }
}
