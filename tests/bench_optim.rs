//! The optimizer step on its own: clip to norm 1, one AdamW update, zero the gradients, on a
//! GPT's parameters (random gradients; their values do not change the work). Quark's AdamW
//! over flat buffers and the per-parameter update it replaced, alternated A B B A. Prints one
//! JSON line per optimizer: microseconds per step and the settings.
//!
//!   quark-bench-optim VOCAB BLOCK LAYERS HEADS WIDTH STEPS THREADS

use quark_ml::gpt::{Gpt, GptConfig};
use quark_ml::optim::{AdamW, AdamWConfig, PerParameterAdamW};
use serde_json::json;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Gives every trainable variable a gradient.
fn backward(model: &Gpt) {
    let loss = model
        .trainable()
        .trainable_variables()
        .iter()
        .map(|v| (v * v.randn_like()).sum(Kind::Float))
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
    loss.backward();
}

/// `steps` rounds of `round` (clip, update, zero), after five untimed ones: the first rounds
/// allocate, and the flat optimizer adopts the gradients.
fn time(round: &mut dyn FnMut(), steps: usize) -> Duration {
    for _ in 0..5 {
        round();
    }
    let started = Instant::now();
    for _ in 0..steps {
        round();
    }
    started.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed: Vec<i64> = args[1..]
        .iter()
        .map(|a| a.parse().expect("whole numbers"))
        .collect();
    let [vocab, block, layers, heads, width, steps, threads] = parsed[..] else {
        eprintln!("usage: quark-bench-optim VOCAB BLOCK LAYERS HEADS WIDTH STEPS THREADS");
        std::process::exit(2);
    };
    tch::set_num_threads(threads as i32);
    let config = GptConfig {
        vocab_size: vocab,
        block_size: block,
        n_layer: layers,
        n_head: heads,
        n_embd: width,
        dropout: 0.0,
        layout: Default::default(),
    };
    let (flat_model, reference_model) = (
        Gpt::new(config, Device::Cpu, 7).expect("a model"),
        Gpt::new(config, Device::Cpu, 7).expect("a model"),
    );
    let variables = flat_model.trainable().trainable_variables();
    let parameters: i64 = variables.iter().map(Tensor::numel).sum::<usize>() as i64;
    let mut flat = AdamW::new(flat_model.trainable(), AdamWConfig::default());
    let mut reference = PerParameterAdamW::new(reference_model.trainable(), AdamWConfig::default());
    backward(&flat_model);
    backward(&reference_model);
    let (mut flat_time, mut reference_time) = (Duration::ZERO, Duration::ZERO);
    let half = steps as usize / 2;
    // One round: clip to norm 1, update, zero the gradients.
    let mut flat_round = || {
        let _ = flat.clip_grad_norm(1.0);
        flat.step(1e-3);
        flat.zero_grad();
    };
    let mut reference_round = || {
        let _ = reference.clip_grad_norm(1.0);
        reference.step(1e-3);
        reference.zero_grad();
    };
    flat_time += time(&mut flat_round, half);
    reference_time += time(&mut reference_round, half);
    reference_time += time(&mut reference_round, half);
    flat_time += time(&mut flat_round, half);
    for (name, took) in [
        ("quark-flat", flat_time),
        ("quark-per-parameter", reference_time),
    ] {
        println!(
            "{}",
            json!({
                "impl": name,
                "us_per_step": took.as_secs_f64() * 1e6 / (2 * half) as f64,
                "tensors": variables.len(),
                "parameters": parameters,
                "steps": 2 * half,
                "threads": tch::get_num_threads(),
                "shape": [vocab, block, layers, heads, width],
            })
        );
    }
}
