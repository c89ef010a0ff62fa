//! Fixtures the ML core's tests share: a short text, a tiny shape, a training configuration
//! and a character-level corpus of the text.

#![allow(dead_code)] // each test binary uses its own share of them

use quark_ml::Tokenizer;
use quark_ml::data::Windows;
use quark_ml::gpt::{Context, Gpt, GptConfig};
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::shards::{self, Shard};
use quark_ml::tokenizer;
use quark_ml::train::{TrainConfig, Trainer};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Command, Stdio};
use tch::{Device, Tensor};

pub const TEXT: &str = "To be, or not to be, that is the question:\n\
Whether 'tis nobler in the mind to suffer\n\
The slings and arrows of outrageous fortune,\n\
Or to take arms against a sea of troubles\n\
And by opposing end them. To die-to sleep,\n";

pub fn shape(vocab: usize, dropout: f64) -> GptConfig {
    GptConfig {
        vocab_size: vocab as i64,
        block_size: 32,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        dropout,
        layout: Default::default(),
    }
}

pub fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        grad_accum: 2,
        max_steps: steps,
        schedule: Schedule {
            max_lr: 1e-2,
            min_lr: 1e-3,
            warmup_steps: 10,
            decay_steps: steps,
        },
        adamw: AdamWConfig {
            beta2: 0.99,
            ..Default::default()
        },
        grad_clip: 1.0,
        eval_interval: 0,
        eval_windows: None,
        checkpoint_interval: 0,
        log_interval: 5,
        seed: 7,
        kl_weight: 0.0,
        objective: Default::default(),
    }
}

/// A character tokenizer and train/validation shards of `TEXT` repeated.
pub fn corpus(dir: &Path) -> (Tokenizer, Shard, Shard) {
    let tokenizer = tokenizer::train_chars(TEXT).unwrap();
    let train = dir.join("train.tok");
    let val = dir.join("val.tok");
    shards::write(&tokenizer, &[TEXT.repeat(40)], &train).unwrap();
    shards::write(&tokenizer, &[TEXT.repeat(4)], &val).unwrap();
    (
        tokenizer,
        Shard::open(&train).unwrap(),
        Shard::open(&val).unwrap(),
    )
}

/// A base model pre-trained for 40 steps on the corpus, with its text shard.
pub fn base(dir: &Path) -> (Gpt, Tokenizer, Shard) {
    pretrained(dir, 40)
}

/// A model pre-trained for `steps` steps on the corpus, with its text shard.
pub fn pretrained(dir: &Path, steps: u64) -> (Gpt, Tokenizer, Shard) {
    std::fs::create_dir_all(dir).unwrap();
    let (tokenizer, train, _) = corpus(dir);
    let model = Gpt::new(shape(tokenizer.get_vocab_size(true), 0.0), Device::Cpu, 5).unwrap();
    let mut pretrain =
        Trainer::start(model, tokenizer, config(steps), None, &dir.join("base")).unwrap();
    let data = Windows::new(train, 8, 32, 7).unwrap();
    let train = Shard::open(&dir.join("train.tok")).unwrap();
    let checkpoint = pretrain
        .run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap()
        .checkpoint;
    let (model, tokenizer) = quark_ml::checkpoint::load(&checkpoint, Device::Cpu).unwrap();
    (model, tokenizer, train)
}

/// Logits of `input` without gradients; with `base_only`, of the base under any adapters.
pub fn logits(model: &Gpt, input: &Tensor, base_only: bool) -> Tensor {
    let context = Context {
        base_only,
        ..Context::default()
    };
    tch::no_grad(|| model.forward(input, &context, None, false).unwrap())
}

/// The largest absolute difference of two tensors of one shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// The venv's python (`QUARK_PYTHON`, which scripts/env sets) running `tests/<script>`.
pub fn python(script: &str) -> Command {
    let python = std::env::var("QUARK_PYTHON")
        .expect("QUARK_PYTHON must name the venv's python (scripts/env sets it)");
    let mut command = Command::new(python);
    command.arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")));
    command
}

/// What `tests/<script> args…` prints with `input` on its standard input; it must succeed.
pub fn python_stdout(script: &str, args: &[&str], input: &str) -> String {
    let mut child = python(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let (mut pipe, input) = (child.stdin.take().unwrap(), input.to_string());
    // Written from another thread: a script may answer before it has read everything.
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut pipe, input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "{script} {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}
