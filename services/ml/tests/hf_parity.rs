//! Exports load in Hugging Face's own libraries (from the venv `QUARK_PYTHON` names):
//! `GPT2LMHeadModel` gives Quark's logits, Python `tokenizers` Quark's ids.

use quark_ml::Tokenizer;
use quark_ml::data::Windows;
use quark_ml::gpt::{Context, Gpt, GptConfig};
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::shards::{self, Shard};
use quark_ml::tokenizer::{self, TrainOptions};
use quark_ml::train::{TrainConfig, Trainer};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Command, Stdio};
use tch::{Device, Tensor};

const TEXT: &str =
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";

fn python() -> String {
    std::env::var("QUARK_PYTHON")
        .expect("QUARK_PYTHON must name the venv's python (scripts/env sets it)")
}

fn script() -> String {
    format!("{}/tests/hf_parity.py", env!("CARGO_MANIFEST_DIR"))
}

/// Ids Python `tokenizers` gives each text with the tokenizer at `path`.
fn python_encode(path: &Path, texts: &[&str]) -> Vec<Vec<u32>> {
    let mut child = Command::new(python())
        .args([&script(), "encode", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    serde_json::to_writer(child.stdin.take().unwrap(), texts).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python tokenizers failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

const PARITY_TEXTS: &[&str] = &[
    "First Citizen: Before we proceed",
    "  leading spaces,\ttabs\n\nand blank lines  ",
    "Ünïcödé ✓ 🦀 — naïve café 日本語",
    "<|user|>hello<|assistant|>hi<|endoftext|>",
    "characters never seen: {}[]#@$%^&*~`|\\",
];

fn assert_same_ids(tokenizer: &Tokenizer, path: &Path) {
    let python = python_encode(path, PARITY_TEXTS);
    for (text, ids) in PARITY_TEXTS.iter().zip(python) {
        let ours = tokenizer.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(ours, ids, "{text:?}");
    }
}

#[test]
fn tokenizers_encode_identically_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, TEXT.repeat(50)).unwrap();
    let bpe = tokenizer::train(
        &[&corpus],
        &TrainOptions {
            vocab_size: 400,
            ..Default::default()
        },
    )
    .unwrap();
    let chars = tokenizer::train_chars(TEXT).unwrap();
    for (name, tokenizer) in [("bpe.json", bpe), ("chars.json", chars)] {
        let path = dir.path().join(name);
        tokenizer::save(&tokenizer, &path).unwrap();
        assert_same_ids(&tokenizer, &path);
    }
}

#[test]
fn exported_checkpoint_gives_the_same_logits_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, TEXT.repeat(50)).unwrap();
    let tokenizer = tokenizer::train(
        &[&corpus],
        &TrainOptions {
            vocab_size: 300,
            ..Default::default()
        },
    )
    .unwrap();
    let shard = dir.path().join("train.tok");
    shards::write(&tokenizer, &[TEXT.repeat(50)], &shard).unwrap();
    let shape = GptConfig {
        vocab_size: tokenizer.get_vocab_size(true) as i64,
        block_size: 32,
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        dropout: 0.0,
    };
    let model = Gpt::new(shape, Device::Cpu, 3).unwrap();
    let config = TrainConfig {
        batch_size: 4,
        grad_accum: 1,
        max_steps: 20,
        schedule: Schedule {
            max_lr: 1e-2,
            min_lr: 1e-3,
            warmup_steps: 2,
            decay_steps: 20,
        },
        adamw: AdamWConfig::default(),
        grad_clip: 1.0,
        eval_interval: 0,
        eval_windows: None,
        checkpoint_interval: 0,
        log_interval: 10,
        seed: 1,
    };
    // Trained weights, so every tensor is off its initial value (biases, LayerNorm gains).
    let mut trainer =
        Trainer::start(model, tokenizer, config, None, &dir.path().join("run")).unwrap();
    let data = Windows::new(Shard::open(&shard).unwrap(), 4, 32, 1).unwrap();
    let checkpoint = trainer
        .run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap()
        .checkpoint;

    let ids: Vec<u32> = trainer
        .tokenizer
        .encode("First Citizen:\nBefore we proceed any further", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(ids.len() > 4 && ids.len() <= 32);
    let input =
        Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1]);
    let ours = tch::no_grad(|| {
        trainer
            .model
            .forward(&input, &Context::default(), None, false)
            .unwrap()
    });

    let out = dir.path().join("hf_logits.safetensors");
    let ids_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let status = Command::new(python())
        .args([
            &script(),
            "logits",
            checkpoint.to_str().unwrap(),
            &ids_arg,
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "transformers could not load the checkpoint"
    );
    let theirs = Tensor::read_safetensors(&out).unwrap().remove(0).1;
    assert_eq!(theirs.size(), ours.size());
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "logits differ by {diff}");
    // The checkpoint's tokenizer.json is the one Python reads.
    assert_same_ids(&trainer.tokenizer, &checkpoint.join("tokenizer.json"));
}
