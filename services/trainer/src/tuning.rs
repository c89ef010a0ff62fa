//! Fine-tuning on feedback: LoRA adapters on the champion (its weights frozen), a pull
//! toward it on the rehearsal text, and the choice of the checkpoint the evaluator gets —
//! the one that learnt the corrections best while inside the gate's held-out limits.

use crate::data::Data;
use quark_events::bus::HandlerError;
use quark_events::{Artifact, CheckpointChoice, GateCheck, GateRule};
use quark_ml::checkpoint;
use quark_ml::gpt::Gpt;
use quark_ml::lora::{self, LoraConfig};
use quark_ml::probe::{self, Limits, Probe, Reading, Selection, Selector};
use quark_ml::train::Trainer;
use quark_runtime::ArtifactStore;
use quark_runtime::config::{EvaluateSettings, TrainerSettings};
use std::collections::HashMap;
use std::path::Path;

/// Replies made of held-out lines the probe scores, as many as the evaluator scores.
const REPLY_CASES: usize = 64;

/// The gate's held-out limits, as the trainer holds its checkpoints to them.
pub(crate) fn limits(settings: &TrainerSettings, gate: &EvaluateSettings) -> Limits {
    Limits {
        max_perplexity_increase: gate.max_perplexity_increase,
        max_reply_loss_increase: gate.max_reply_loss_increase,
        margin: settings.gate_margin,
    }
}

/// Attaches the configured adapters to a base about to be fine-tuned (rank 0: none).
pub(crate) fn adapt(model: &mut Gpt, settings: &TrainerSettings) -> Result<(), HandlerError> {
    let l = &settings.lora;
    if l.rank == 0 {
        return Ok(());
    }
    let config = LoraConfig {
        rank: l.rank,
        alpha: l.alpha,
        targets: l.targets.clone(),
    };
    lora::attach(model, &config, settings.seed).map_err(HandlerError::permanent)
}

/// The selector of a run: it measures what the gate will, on the held-out text the gate
/// uses, and the corrections. `base` is the model the run started from when `trainer`'s model
/// is not it (a resumed run without adapters).
pub(crate) fn selector(
    trainer: &Trainer,
    data: &Data,
    base: Option<&Gpt>,
    settings: &TrainerSettings,
    gate: &EvaluateSettings,
    dir: &Path,
) -> Result<Selector, HandlerError> {
    let model = &trainer.model;
    let (block, device) = (model.config.block_size as usize, model.device());
    let tokenizer = &trainer.tokenizer;
    let permanent = HandlerError::permanent;
    let held_out = match data.held_out.is_empty() {
        true => vec![],
        false => probe::held_out_batches(
            tokenizer,
            &data.held_out,
            block,
            gate.validation_windows,
            dir,
            device,
        )
        .unwrap_or_default(),
    };
    let replies = probe::held_out_replies(&data.held_out, REPLY_CASES);
    let replies = match replies.is_empty() {
        true => vec![],
        false => probe::reply_batches(tokenizer, &replies, block, device).map_err(permanent)?,
    };
    let probe = Probe::new(held_out, replies, &data.taught, block, device).map_err(permanent)?;
    let reading = match base {
        Some(base) => probe.read(base, false),
        None => probe.read(model, model.adapters().is_some()),
    }
    .map_err(permanent)?;
    let limits = limits(settings, gate);
    Selector::new(
        probe,
        reading,
        limits,
        settings.probe_interval,
        settings.stop_when_learnt,
    )
    .map_err(permanent)
}

/// The chosen checkpoint against the base, on the limits it was held to.
pub(crate) fn choice(selection: &Selection, limits: &Limits) -> CheckpointChoice {
    let room = 1.0 - limits.margin;
    let (base, chosen) = (&selection.base, &selection.chosen.reading);
    let check = |metric: &str, b: Option<f64>, c: Option<f64>, limit: f64| {
        let (b, c) = (b?, c?);
        let threshold = limit * room;
        Some(GateCheck {
            metric: metric.to_string(),
            rule: GateRule::MaxRelativeIncrease,
            baseline: Some(b),
            candidate: c,
            threshold,
            passed: c <= b * (1.0 + threshold),
        })
    };
    let checks = [
        check(
            "perplexity",
            base.perplexity,
            chosen.perplexity,
            limits.max_perplexity_increase,
        ),
        check(
            "reply_loss",
            base.reply_loss,
            chosen.reply_loss,
            limits.max_reply_loss_increase,
        ),
    ];
    CheckpointChoice {
        step: selection.chosen.step as i64,
        fits_gate: selection.chosen.fits,
        checks: checks.into_iter().flatten().collect(),
    }
}

/// What the run learnt, for model.trained's metrics.
pub(crate) fn metrics(selection: &Selection) -> HashMap<String, f64> {
    let of = |prefix: &str, r: &Reading| {
        [
            (format!("taught_loss{prefix}"), r.taught_loss),
            (format!("taught_exact{prefix}"), r.taught_exact),
        ]
    };
    let mut metrics: HashMap<String, f64> = of("_before", &selection.base)
        .into_iter()
        .chain(of("", &selection.chosen.reading))
        .collect();
    metrics.insert("chosen_step".into(), selection.chosen.step as f64);
    metrics.insert("probes".into(), selection.path.len() as f64);
    metrics
}

/// Publishes the run's model: the adapter in PEFT's layout (when it trained one), then the
/// model with the adapter merged in as the servable checkpoint.
pub(crate) async fn publish(
    store: &ArtifactStore,
    trainer: &mut Trainer,
    dir: &Path,
) -> Result<(Artifact, Option<Artifact>), HandlerError> {
    let out = dir.join("publish");
    let _ = std::fs::remove_dir_all(&out);
    let adapter = match trainer.model.adapters() {
        Some(_) => {
            let adapter_dir = out.join("adapter");
            std::fs::create_dir_all(&adapter_dir).map_err(HandlerError::transient)?;
            lora::save(&trainer.model, &adapter_dir).map_err(HandlerError::permanent)?;
            lora::merge(&mut trainer.model).map_err(HandlerError::permanent)?;
            Some(
                store
                    .put_dir(&adapter_dir, &[lora::CONFIG, lora::WEIGHTS])
                    .await
                    .map_err(HandlerError::transient)?,
            )
        }
        None => None,
    };
    let model_dir = out.join("model");
    checkpoint::save(
        &model_dir,
        &trainer.model,
        &trainer.tokenizer,
        None,
        trainer.state(),
    )
    .map_err(HandlerError::permanent)?;
    let checkpoint = store
        .put_dir(&model_dir, crate::MODEL_FILES)
        .await
        .map_err(HandlerError::transient)?;
    Ok((checkpoint, adapter))
}
