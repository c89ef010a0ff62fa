//! The continuous batch on its own, in one process (no HTTP, no broker): `CONCURRENCY`
//! generations of `MAX_TOKENS` tokens asked at once, again as each ends (a closed loop like
//! `quark-bench-gateway`'s clients), on the cold-start model's shape with random weights and
//! a byte-level BPE tokenizer trained on the plays. Prints one JSON line per concurrency:
//! tokens/s, decode steps, milliseconds per step and per-request latency percentiles.
//!
//!   quark-bench-engine PLAYS_DIR THREADS MAX_TOKENS CONCURRENCY...
//!
//! THREADS is the batch's libtorch intra-op threads (`gateway.batch.threads`; 0: the
//! process-wide count).

use quark_ml::batch::{BatchLimits, Engine};
use quark_ml::generate::GenerateOptions;
use quark_ml::gpt::{Gpt, GptConfig};
use quark_ml::tokenizer::{self, TrainOptions};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, plays, threads, max_tokens, concurrency @ ..] = args.as_slice() else {
        eprintln!("usage: quark-bench-engine PLAYS_DIR THREADS MAX_TOKENS CONCURRENCY...");
        std::process::exit(2);
    };
    let parse = |s: &str| s.parse::<usize>().expect("a whole number");
    let files: Vec<PathBuf> = std::fs::read_dir(plays)
        .expect("the plays directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    let tok = tokenizer::train(&paths, &TrainOptions::default()).expect("a tokenizer");
    // The cold-start shape (1.86 M parameters); its weights do not change a step's work.
    let shape = GptConfig {
        vocab_size: tok.get_vocab_size(true) as i64,
        block_size: 512,
        n_layer: 4,
        n_head: 4,
        n_embd: 128,
        dropout: 0.0,
        layout: Default::default(),
    };
    let prompts: Vec<Vec<u32>> = std::fs::read_to_string(&files[0])
        .expect("a play")
        .lines()
        .filter(|l| l.split_whitespace().count() >= 6)
        .take(256)
        .map(|l| tok.encode(l, false).expect("encoded").get_ids().to_vec())
        .collect();
    let model = Gpt::new(shape, tch::Device::Cpu, 7).expect("a model");
    let limits = BatchLimits {
        threads: parse(threads),
        ..BatchLimits::default()
    };
    let engine = Engine::spawn(model, tok, limits).expect("an engine");
    for clients in concurrency.iter().map(|c| parse(c)) {
        run(&engine, &prompts, clients, parse(max_tokens));
    }
}

fn run(engine: &Engine, prompts: &[Vec<u32>], clients: usize, max_tokens: usize) {
    let requests = (2 * clients).max(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let steps_before = engine.load().decode_steps;
    let started = Instant::now();
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= requests {
                            return mine;
                        }
                        let options = GenerateOptions {
                            max_tokens,
                            temperature: 0.8,
                            seed: i as u64,
                            ..GenerateOptions::default()
                        };
                        let sent = Instant::now();
                        let prompt = &prompts[i % prompts.len()];
                        engine
                            .generate(prompt, &options, |_| std::ops::ControlFlow::Continue(()))
                            .expect("a generation");
                        mine.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a client"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let steps = engine.load().decode_steps - steps_before;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let line = json!({
        "concurrency": clients,
        "requests": requests,
        "max_tokens": max_tokens,
        "tokens_per_s": (requests * max_tokens) as f64 / seconds,
        "decode_steps": steps,
        "ms_per_step": seconds * 1e3 / steps as f64,
        "latency_ms_p50": at(0.5),
        "latency_ms_p99": at(0.99),
    });
    println!("{line}");
}
