//! Exports load in Hugging Face's own libraries (from the venv `QUARK_PYTHON` names):
//! `GPT2LMHeadModel` gives Quark's logits, Python `tokenizers` Quark's ids, PEFT loads
//! Quark's LoRA adapters with the logits of Quark's merged model, and a reward model loads as
//! `GPT2ForSequenceClassification` with Quark's score; a model of nanoGPT's layout loads as
//! GPT-2 with zero biases and exact GELU.

use quark_ml::Tokenizer;
use quark_ml::checkpoint;
use quark_ml::data::Windows;
use quark_ml::gpt::{Gpt, GptConfig, Layout};
use quark_ml::lora::LoraConfig;
use quark_ml::optim::{AdamWConfig, Schedule};
use quark_ml::shards::{self, Shard};
use quark_ml::tokenizer::{self, TrainOptions};
use quark_ml::train::{TrainConfig, Trainer};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

mod common;
use common::{logits, max_diff, python, python_stdout, shape};

const TEXT: &str =
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";

/// Ids Python gives each text: `tokenizers` with the tokenizer file at `path` (`encode`), or
/// transformers' `AutoTokenizer` with the checkpoint directory at `path` (`auto_encode`).
fn python_encode(how: &str, path: &Path, texts: &[&str]) -> Vec<Vec<u32>> {
    let input = serde_json::to_string(texts).unwrap();
    let out = python_stdout("hf_parity.py", &[how, path.to_str().unwrap()], &input);
    serde_json::from_str(&out).unwrap()
}

const PARITY_TEXTS: &[&str] = &[
    "First Citizen: Before we proceed",
    "  leading spaces,\ttabs\n\nand blank lines  ",
    "Ünïcödé ✓ 🦀 — naïve café 日本語",
    "<|user|>hello<|assistant|>hi<|endoftext|>",
    "characters never seen: {}[]#@$%^&*~`|\\",
];

fn assert_same_ids(tokenizer: &Tokenizer, how: &str, path: &Path) {
    let python = python_encode(how, path, PARITY_TEXTS);
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
        assert_same_ids(&tokenizer, "encode", &path);
        // A checkpoint's tokenizer through transformers' AutoTokenizer (what evaluation
        // tools load), the character-level one's spaces included.
        let model = Gpt::new(shape(tokenizer.get_vocab_size(true), 0.0), Device::Cpu, 1).unwrap();
        let saved = dir.path().join(format!("{name}.checkpoint"));
        checkpoint::save(&saved, &model, &tokenizer, None, &serde_json::json!({})).unwrap();
        assert_same_ids(&tokenizer, "auto_encode", &saved);
    }
}

/// A small model trained for a few steps on TEXT (every tensor off its initial value), in
/// `dir/run`, with the checkpoint its run ended on.
fn trained_model(dir: &Path, lora: Option<&LoraConfig>, layout: Layout) -> (Trainer, PathBuf) {
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, TEXT.repeat(50)).unwrap();
    let tokenizer = tokenizer::train(
        &[&corpus],
        &TrainOptions {
            vocab_size: 300,
            ..Default::default()
        },
    )
    .unwrap();
    let shard = dir.join("train.tok");
    shards::write(&tokenizer, &[TEXT.repeat(50)], &shard).unwrap();
    let shape = GptConfig {
        vocab_size: tokenizer.get_vocab_size(true) as i64,
        block_size: 32,
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        dropout: 0.0,
        layout,
    };
    let mut model = Gpt::new(shape, Device::Cpu, 3).unwrap();
    if let Some(lora) = lora {
        quark_ml::lora::attach(&mut model, lora, 5).unwrap();
    }
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
        kl_weight: 0.0,
        objective: Default::default(),
    };
    let mut trainer = Trainer::start(model, tokenizer, config, None, &dir.join("run")).unwrap();
    let data = Windows::new(Shard::open(&shard).unwrap(), 4, 32, 1).unwrap();
    let checkpoint = trainer
        .run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap()
        .checkpoint;
    (trainer, checkpoint)
}

fn input_of(ids: &[u32]) -> Tensor {
    Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1])
}

fn logits_of(model: &Gpt, ids: &[u32]) -> Tensor {
    logits(model, &input_of(ids), false)
}

/// Logits Python computes with `command` (hf_parity.py's) for `ids`, from `dirs`.
fn python_logits(command: &str, dirs: &[&Path], ids: &[u32], out: &Path) -> Tensor {
    let ids_arg = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut args = vec![command.to_string()];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap().to_string()));
    args.extend([ids_arg, out.to_str().unwrap().to_string()]);
    let status = python("hf_parity.py").args(&args).status().unwrap();
    assert!(
        status.success(),
        "{command}: Python could not load {dirs:?}"
    );
    Tensor::read_safetensors(out).unwrap().remove(0).1
}

const PROMPT: &str = "First Citizen:\nBefore we proceed any further";

fn prompt_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    tokenizer.encode(PROMPT, false).unwrap().get_ids().to_vec()
}

#[test]
fn exported_checkpoint_gives_the_same_logits_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let (trainer, checkpoint) = trained_model(dir.path(), None, Layout::default());
    let ids = prompt_ids(&trainer.tokenizer);
    assert!(ids.len() > 4 && ids.len() <= 32);
    let ours = logits_of(&trainer.model, &ids);
    let out = dir.path().join("hf_logits.safetensors");
    let theirs = python_logits("logits", &[&checkpoint], &ids, &out);
    let diff = max_diff(&ours, &theirs);
    assert!(diff <= 1e-4, "logits differ by {diff}");
    // The checkpoint's tokenizer.json is the one Python reads.
    assert_same_ids(
        &trainer.tokenizer,
        "encode",
        &checkpoint.join("tokenizer.json"),
    );
    assert_same_ids(&trainer.tokenizer, "auto_encode", &checkpoint);
}

/// nanoGPT's layout (no biases, GELU itself): only the weights train, the biases saved beside
/// them stay zero, and the checkpoint loads as GPT-2 (activation `gelu`) in transformers and
/// in Quark with the same logits.
#[test]
fn a_nanogpt_layout_model_trains_only_its_weights_and_exports_as_gpt2() {
    let dir = tempfile::tempdir().unwrap();
    let (trainer, checkpoint) = trained_model(dir.path(), None, Layout::NANOGPT);
    let model = &trainer.model;
    // Per block: c_attn 3d, c_proj d, c_fc 4d, c_proj d, two LayerNorms 2d; then ln_f d.
    let (d, layers) = (model.config.n_embd, model.config.n_layer);
    let gpt2 = GptConfig {
        layout: Layout::default(),
        ..model.config
    };
    let with_biases = Gpt::new(gpt2, Device::Cpu, 3).unwrap();
    assert_eq!(
        with_biases.parameters() - model.parameters(),
        layers * 11 * d + d
    );
    let variables = model.vs.variables();
    let biases: Vec<_> = variables
        .iter()
        .filter(|(n, _)| n.ends_with(".bias"))
        .collect();
    assert_eq!(biases.len() as i64, layers * 6 + 1);
    for (name, bias) in biases {
        assert_eq!(
            bias.abs().sum(tch::Kind::Float).double_value(&[]),
            0.0,
            "{name}"
        );
    }
    let fresh = Gpt::new(model.config, Device::Cpu, 3).unwrap();
    let moved = max_diff(
        &variables["transformer.h.0.mlp.c_fc.weight"],
        &fresh.vs.variables()["transformer.h.0.mlp.c_fc.weight"],
    );
    assert!(moved > 1e-3, "the weights trained ({moved})");
    // The activation matters: the same weights under GPT-2's approximation differ.
    let ids = prompt_ids(&trainer.tokenizer);
    let ours = logits_of(model, &ids);
    let mut approximated = Gpt::new(gpt2, Device::Cpu, 3).unwrap();
    approximated.vs.copy(&model.vs).unwrap();
    assert!(max_diff(&ours, &logits_of(&approximated, &ids)) > 1e-4);
    let out = dir.path().join("hf_logits.safetensors");
    let theirs = python_logits("logits", &[&checkpoint], &ids, &out);
    let diff = max_diff(&ours, &theirs);
    assert!(diff <= 1e-4, "transformers' logits differ by {diff}");
    let (loaded, _) = checkpoint::load(&checkpoint, Device::Cpu).unwrap();
    assert_eq!(
        loaded.config.layout,
        Layout::NANOGPT,
        "saved with the model"
    );
    assert_eq!(loaded.parameters(), model.parameters());
    assert_eq!(max_diff(&ours, &logits_of(&loaded, &ids)), 0.0);
}

/// A trained LoRA adapter, saved in PEFT's layout, loads with `PeftModel.from_pretrained` on
/// the base it was trained on and gives the logits of Quark's merged model.
#[test]
fn lora_adapter_loads_in_peft_with_the_merged_models_logits() {
    let dir = tempfile::tempdir().unwrap();
    let lora = LoraConfig::default();
    let (mut trainer, checkpoint) = trained_model(dir.path(), Some(&lora), Layout::default());
    let ids = prompt_ids(&trainer.tokenizer);
    let (frozen, _) = checkpoint::load(&checkpoint, Device::Cpu).unwrap();
    let adapted = logits_of(&trainer.model, &ids);
    // The checkpoint reloads with its adapter; the adapter has learnt something.
    let reloaded = logits_of(&frozen, &ids);
    assert!(
        max_diff(&reloaded, &adapted) < 1e-6,
        "a reloaded run has its adapter"
    );
    let base_only = logits(&frozen, &input_of(&ids), true);
    assert!(
        max_diff(&base_only, &adapted) > 1e-2,
        "training moved the adapter"
    );

    let adapter_dir = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    quark_ml::lora::save(&trainer.model, &adapter_dir).unwrap();
    quark_ml::lora::merge(&mut trainer.model).unwrap();
    assert!(trainer.model.adapters().is_none());
    let merged = logits_of(&trainer.model, &ids);
    let diff = max_diff(&merged, &adapted);
    assert!(diff <= 1e-4, "merging changed the logits by {diff}");

    // The frozen base alone, as the parent model is published.
    let base_dir = dir.path().join("base");
    std::fs::create_dir_all(&base_dir).unwrap();
    for file in [
        checkpoint::CONFIG,
        checkpoint::WEIGHTS,
        checkpoint::TOKENIZER,
    ] {
        std::fs::copy(checkpoint.join(file), base_dir.join(file)).unwrap();
    }
    let out = dir.path().join("peft_logits.safetensors");
    let theirs = python_logits("peft_logits", &[&base_dir, &adapter_dir], &ids, &out);
    let diff = max_diff(&merged, &theirs);
    assert!(
        diff <= 1e-4,
        "PEFT's logits differ from the merged model's by {diff}"
    );
}

/// A reward model (the GPT body with a scalar head) exports as HF's sequence classifier,
/// which scores a conversation where Quark does: its last token.
#[test]
fn reward_model_gives_the_same_score_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let (trainer, _) = trained_model(dir.path(), None, Layout::default());
    let mut model = trainer.model;
    model.add_score_head(Some(3)).unwrap();
    let conversation = [
        quark_ml::chat::Message::new(quark_ml::chat::Role::User, "Speak"),
        quark_ml::chat::Message::new(quark_ml::chat::Role::Assistant, "speak, speak"),
    ];
    let ids = quark_ml::chat::render(&trainer.tokenizer, &conversation)
        .unwrap()
        .ids;
    let input = input_of(&ids);
    let last = Tensor::from_slice(&[ids.len() as i64 - 1]);
    let ours = tch::no_grad(|| {
        model
            .reward(&input, &last, &quark_ml::gpt::Context::default(), false)
            .unwrap()
    });
    let saved = dir.path().join("reward");
    checkpoint::save(
        &saved,
        &model,
        &trainer.tokenizer,
        None,
        &serde_json::json!({}),
    )
    .unwrap();
    let out = dir.path().join("hf_reward.safetensors");
    let theirs = python_logits("reward", &[&saved], &ids, &out);
    let diff = max_diff(&ours, &theirs.view([-1]));
    assert!(diff <= 1e-4, "scores differ by {diff}");
    assert!(
        ours.abs().double_value(&[0]) > 1e-4,
        "the head scores something"
    );
}
