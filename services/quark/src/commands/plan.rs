//! `quark plan`: what a training run costs before it runs, and what a budget buys.

use quark_plan::{Precision, Shape, TASKS, compute_optimal, device};
use std::fmt::Write;

pub struct PlanRequest {
    pub shape: Shape,
    pub tokens: f64,
    pub device: String,
    pub mfu: f64,
    pub micro_batch: u64,
    pub precision: Precision,
    pub budget_flops: Option<f64>,
}

fn si(value: f64) -> String {
    let units = [
        (1e21, "Z"),
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ];
    units
        .iter()
        .find(|(scale, _)| value >= *scale)
        .map_or(format!("{value:.0}"), |(scale, unit)| {
            format!("{:.2}{unit}", value / scale)
        })
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86_400.0),
    }
}

pub fn plan(request: &PlanRequest) -> anyhow::Result<String> {
    let shape = request.shape;
    shape.validate()?;
    if !(request.mfu > 0.0 && request.mfu <= 1.0) {
        anyhow::bail!("--mfu must be in (0, 1], got {}", request.mfu);
    }
    let device = device(&request.device)?;
    let mut out = String::new();
    let flops = shape.training_flops(request.tokens);
    let memory = shape.training_memory(request.precision, request.micro_batch);
    writeln!(
        out,
        "model: {} layers, {} heads, width {}, context {}, vocabulary {}",
        shape.n_layer, shape.n_head, shape.n_embd, shape.block_size, shape.vocab_size
    )?;
    writeln!(
        out,
        "parameters: {} ({} excluding the position table)",
        si(shape.parameters() as f64),
        si(shape.compute_parameters() as f64)
    )?;
    writeln!(
        out,
        "training FLOPs per token: {} (6N + attention)",
        si(shape.training_flops_per_token())
    )?;
    writeln!(
        out,
        "training on {} tokens: {}FLOPs ({:.1} tokens per parameter; Chinchilla-optimal is about 20)",
        si(request.tokens),
        si(flops),
        request.tokens / shape.parameters() as f64
    )?;
    writeln!(
        out,
        "memory ({:?}, micro-batch {}): weights {}, gradients {}, AdamW state {}, activations {}; total {}",
        request.precision,
        request.micro_batch,
        gib(memory.weights),
        gib(memory.gradients),
        gib(memory.optimizer),
        gib(memory.activations),
        gib(memory.total())
    )?;
    writeln!(
        out,
        "time on {} ({}) at {:.0}% MFU: {}",
        device.name,
        device.description,
        request.mfu * 100.0,
        duration(device.seconds(flops, request.mfu))
    )?;
    if let Some(budget) = request.budget_flops {
        let (n, d) = compute_optimal(budget);
        writeln!(
            out,
            "compute-optimal for {}FLOPs: {} parameters on {} tokens; {} on {}",
            si(budget),
            si(n),
            si(d),
            duration(device.seconds(budget, request.mfu)),
            device.name
        )?;
    }
    writeln!(out, "\ntasks:")?;
    for task in TASKS {
        writeln!(out, "  {}: {}", task.name, task.description)?;
        for (metric, how) in task.metrics {
            writeln!(out, "    {metric}: {how}")?;
        }
    }
    writeln!(
        out,
        "  every task: safety_pass_rate on the red-team prompts (at least evaluate.min_safety_pass_rate, and within evaluate.max_safety_decrease of the champion), latency_p50_ms / latency_p95_ms"
    )?;
    writeln!(
        out,
        "  after preference feedback: reward_win_rate, the share of prompts on which the reward model prefers the candidate's answer to the champion's (at least evaluate.min_reward_win_rate)"
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PlanRequest {
        PlanRequest {
            shape: Shape {
                n_layer: 12,
                n_head: 12,
                n_embd: 768,
                block_size: 1024,
                vocab_size: 50257,
            },
            tokens: 10e9,
            device: "h100".into(),
            mfu: 0.4,
            micro_batch: 8,
            precision: Precision::Bf16Mixed,
            budget_flops: Some(1e21),
        }
    }

    #[test]
    fn reports_size_cost_time_and_tasks() {
        let report = plan(&request()).unwrap();
        assert!(report.contains("parameters: 124.44M"), "{report}");
        // 10e9 tokens × 855.17 MFLOPs per token = 8.55e18 FLOPs, at 0.4 × 989 TFLOP/s ≈ 6.0 h.
        assert!(report.contains("10.00G tokens: 8.55EFLOPs"), "{report}");
        assert!(report.contains("6.0 h"), "{report}");
        // √(1e21 / 120) = 2.89e9 parameters on 57.7e9 tokens.
        assert!(
            report.contains("2.89G parameters on 57.74G tokens"),
            "{report}"
        );
        assert!(
            report.contains("rouge_l") && report.contains("token_f1"),
            "{report}"
        );
    }

    #[test]
    fn bad_requests_are_clear_errors() {
        let bad = PlanRequest {
            mfu: 1.5,
            ..request()
        };
        assert!(plan(&bad).unwrap_err().to_string().contains("--mfu"));
        let bad = PlanRequest {
            device: "tpu".into(),
            ..request()
        };
        assert!(
            plan(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown device")
        );
    }
}
