//! Learning from preferences on real libtorch (CPU): DPO and IPO raise the policy's margin
//! on held-out pairs of the preference they learnt, a Bradley–Terry reward model ranks
//! held-out pairs and keeps its head through a checkpoint, and pairs that cannot teach are
//! refused with a reason.

mod common;

use common::{TEXT, config, corpus, pretrained};
use quark_ml::align::{self, DpoConfig, DpoLoss, Objective, RewardConfig};
use quark_ml::checkpoint;
use quark_ml::data::{Batches, validation_batches};
use quark_ml::gpt::Gpt;
use quark_ml::lora::{self, LoraConfig};
use quark_ml::preference::{self, Pair, Pairs};
use quark_ml::probe::{Limits, Probe, Selector};
use quark_ml::rloo::{Judge, Prompts, RlooConfig, leave_one_out};
use quark_ml::train::{Progress, TrainConfig, Trainer, evaluate};
use quark_ml::{MlError, Tokenizer};
use std::ops::ControlFlow;
use std::path::Path;
use tch::Device;

/// Pairs over phrases of the corpus the base model read: each prefers twelve characters of
/// it to the same characters shuffled two ways (`flipped`: the other way round). Phrases start
/// at every character; those of the first three lines are trained on, the last two's held out.
fn pairs(held_out: bool, flipped: bool) -> Vec<Pair> {
    let lines: Vec<&str> = TEXT.lines().collect();
    let text = match held_out {
        true => lines[3..].join(" "),
        false => lines[..3].join(" "),
    };
    phrase_pairs(&text, flipped, |_| true)
}

/// Pairs over the phrases of `text` whose start `keep`s.
fn phrase_pairs(text: &str, flipped: bool, keep: impl Fn(usize) -> bool) -> Vec<Pair> {
    let chars: Vec<char> = text.chars().collect();
    // Fixed permutations (5 and 7 are prime to 12): the same letters, out of order.
    (0..chars.len() - 12)
        .filter(|&i| keep(i))
        .flat_map(|i| [5, 7].map(|step| (i, step)))
        .map(|(i, step)| {
            let good: String = chars[i..i + 12].iter().collect();
            let bad: String = (0..12).map(|k| chars[i + k * step % 12]).collect();
            let (chosen, rejected) = if flipped { (bad, good) } else { (good, bad) };
            Pair {
                prompt: "say".into(),
                chosen,
                rejected,
                margin: None,
            }
        })
        .collect()
}

fn encoded(tokenizer: &Tokenizer, held_out: bool, flipped: bool, batch: usize) -> Pairs {
    encode(tokenizer, &pairs(held_out, flipped), batch)
}

fn encode(tokenizer: &Tokenizer, pairs: &[Pair], batch: usize) -> Pairs {
    let encoded = preference::encode(tokenizer, pairs).unwrap();
    Pairs::new(encoded, batch, 32, 0, 3).unwrap()
}

/// Pairs over every line's phrases, every fifth start held out (as the trainer holds out
/// every tenth pair): the held-out pairs are new strings of the same kind.
fn interleaved(tokenizer: &Tokenizer, held_out: bool) -> Pairs {
    let text = TEXT.lines().collect::<Vec<_>>().join(" ");
    let pairs = phrase_pairs(&text, false, |i| (i % 5 == 0) == held_out);
    encode(tokenizer, &pairs, 4)
}

/// `pairs` with the log-probabilities `model` (the reference) gives them.
fn with_reference(model: &Gpt, pairs: Pairs) -> Pairs {
    let logps = align::reference_logps(model, &pairs).unwrap();
    pairs.with_reference(logps).unwrap()
}

fn preference_config(steps: u64, lr: f64, objective: Objective) -> TrainConfig {
    let mut c = config(steps);
    c.grad_accum = 1;
    c.batch_size = 4;
    c.schedule.max_lr = lr;
    c.schedule.min_lr = lr / 10.0;
    c.schedule.warmup_steps = 2;
    c.adamw.weight_decay = 0.0;
    c.objective = objective;
    c
}

/// Trains `model` on `data` and returns it with the statistics of every report.
fn train(
    model: Gpt,
    tokenizer: Tokenizer,
    config: TrainConfig,
    data: &dyn Batches,
    dir: &Path,
) -> (Gpt, Vec<Progress>) {
    let mut trainer = Trainer::start(model, tokenizer, config, None, dir).unwrap();
    let mut reports = Vec::new();
    trainer
        .run(data, None, |p| {
            if p.loss.is_some() {
                reports.push(p.clone());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    (trainer.model, reports)
}

#[test]
fn dpo_and_ipo_raise_the_margin_on_held_out_pairs_of_the_same_preference() {
    for loss in [DpoLoss::Sigmoid, DpoLoss::Ipo] {
        let dir = tempfile::tempdir().unwrap();
        let (model, tokenizer, _) = pretrained(dir.path(), 150);
        let train_pairs = with_reference(&model, encoded(&tokenizer, false, false, 4));
        let held_out = with_reference(&model, encoded(&tokenizer, true, false, 4));
        let dpo = DpoConfig { beta: 0.1, loss };
        let before = align::read_policy(&model, &held_out, dpo.beta).unwrap();
        // The policy is its own reference before training: every reward is zero.
        assert!(before.margin.abs() < 1e-5, "{loss:?}: {before:?}");
        let config = preference_config(30, 1e-3, Objective::Dpo(dpo));
        let (model, reports) = train(
            model,
            tokenizer,
            config,
            &train_pairs,
            &dir.path().join("run"),
        );
        let after = align::read_policy(&model, &held_out, dpo.beta).unwrap();
        assert!(
            after.margin > 0.5 && after.accuracy >= 0.8,
            "{loss:?}: held-out pairs before {before:?}, after {after:?}"
        );
        // Training logs the rewards, margin and accuracy of the pairs it steps on.
        let last = &reports.last().unwrap().stats;
        assert_eq!(
            last.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "rewards_accuracy",
                "rewards_chosen",
                "rewards_margin",
                "rewards_rejected"
            ]
        );
        assert!(
            last["rewards_margin"] > 0.0 && last["rewards_accuracy"] > 0.9,
            "{loss:?}: {last:?}"
        );
        let first = reports.first().unwrap();
        assert!(
            reports.last().unwrap().loss < first.loss,
            "{loss:?}: the loss fell"
        );
    }
}

/// The evaluator's default limit on held-out perplexity (`evaluate.max_perplexity_increase`).
const MAX_PERPLEXITY_INCREASE: f64 = 0.02;

#[test]
fn dpo_on_flipped_preferences_hurts_held_out_perplexity_beyond_the_gates_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 150);
    let (_, _, val) = corpus(dir.path());
    let held_out = validation_batches(&val, 32, 8, None, Device::Cpu).unwrap();
    let perplexity = |m: &Gpt| evaluate(m, &held_out).unwrap().exp();
    let before = perplexity(&model);
    // Taught to prefer reversed text to the corpus's own, probed as the trainer probes a DPO
    // run: every fifth step, against the gate's limits with the trainer's margin.
    let flipped = with_reference(&model, encoded(&tokenizer, false, true, 4));
    let probed = validation_batches(&val, 32, 8, None, Device::Cpu).unwrap();
    let probe = Probe::new(probed, vec![], &flipped.chosen(), 32, Device::Cpu).unwrap();
    let base = probe.read(&model, false).unwrap();
    let limits = Limits {
        max_perplexity_increase: MAX_PERPLEXITY_INCREASE,
        max_reply_loss_increase: 0.03,
        margin: 0.25,
    };
    let mut selector = Selector::new(probe, base, limits, 5, 1.0).unwrap();
    let config = preference_config(30, 3e-3, Objective::Dpo(DpoConfig::default()));
    let mut run = Trainer::start(model, tokenizer, config, None, &dir.path().join("run")).unwrap();
    run.run_observed(&flipped, None, |p, m| {
        selector.observe(p.step, p.max_steps, m)
    })
    .unwrap();
    let after = perplexity(&run.model);
    assert!(
        after > before * (1.0 + MAX_PERPLEXITY_INCREASE),
        "perplexity {before:.3} -> {after:.3}"
    );
    // No checkpoint of the run stays inside the limits: the one handed on is marked unfit,
    // which the evaluator turns into a regression without measuring it.
    let selection = selector.finish(&run.model).unwrap();
    assert!(!selection.chosen.fits, "{:?}", selection.path);
    assert!(
        selection.path.iter().all(|p| !p.fits),
        "{:?}",
        selection.path
    );
}

#[test]
fn dpo_refuses_pairs_without_their_reference_log_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 150);
    let pairs = encoded(&tokenizer, false, false, 4);
    let config = preference_config(2, 1e-3, Objective::Dpo(DpoConfig::default()));
    let mut trainer =
        Trainer::start(model, tokenizer, config, None, &dir.path().join("run")).unwrap();
    let error = trainer
        .run(&pairs, None, |_| ControlFlow::Continue(()))
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("reference log-probabilities"),
        "{error}"
    );
    let mut wrong = align::reference_logps(&trainer.model, &pairs).unwrap();
    wrong.pop();
    assert!(matches!(pairs.with_reference(wrong), Err(MlError::Data(_))));
}

#[test]
fn a_reward_model_ranks_held_out_pairs_and_keeps_its_head_in_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, tokenizer, _) = pretrained(dir.path(), 400);
    model.add_score_head(Some(11)).unwrap();
    let train_pairs = interleaved(&tokenizer, false);
    let held_out = interleaved(&tokenizer, true);
    let before = align::read_reward_model(&model, &held_out).unwrap();
    let objective = Objective::Reward(RewardConfig {
        center_rewards_coefficient: Some(0.01),
    });
    let config = preference_config(200, 1e-3, objective);
    let tok = tokenizer.clone();
    let (model, reports) = train(
        model,
        tokenizer,
        config,
        &train_pairs,
        &dir.path().join("run"),
    );
    let after = align::read_reward_model(&model, &held_out).unwrap();
    let learnt = align::read_reward_model(&model, &train_pairs).unwrap();
    // A two-layer, 32-wide body ranks its own 322 training pairs well, and the 82 held out
    // nearly as well (a coin reaches 0.75 of 82 with probability under 0.001 %). Over head
    // seeds 11–18: training 0.95–0.99, held out 0.82–0.96, margin up 2.2–3.5. (Pairs held out
    // by whole lines were ranked 0.48–0.70: too few phrases for this body to generalise from.)
    assert_eq!((train_pairs.len(), held_out.len()), (322, 82));
    assert!(
        learnt.accuracy >= 0.9 && after.accuracy >= 0.75 && after.margin > before.margin + 1.0,
        "held-out pairs before {before:?}, after {after:?}; training pairs {learnt:?}"
    );
    // Centring adds coefficient × mean((r_chosen + r_rejected)²) to the Bradley–Terry loss.
    let batch = held_out.sequential(Device::Cpu).remove(0);
    let loss = |c| {
        let config = RewardConfig {
            center_rewards_coefficient: c,
        };
        align::reward_step(&model, &batch, &config)
            .unwrap()
            .loss
            .double_value(&[])
    };
    let rows = batch.pairs.as_ref().unwrap();
    let rewards = tch::no_grad(|| {
        model
            .reward(&batch.input, &rows.last, &Default::default(), false)
            .unwrap()
    });
    let n = rewards.size()[0] / 2;
    let sum = rewards.narrow(0, 0, n) + rewards.narrow(0, n, n);
    let centring = sum.square().mean(tch::Kind::Float).double_value(&[]);
    assert!(((loss(Some(2.0)) - loss(None)) - 2.0 * centring).abs() < 1e-5);
    assert!(reports.last().unwrap().stats["rewards_accuracy"] > 0.5);

    let saved = dir.path().join("reward");
    let state = serde_json::json!({});
    checkpoint::save(&saved, &model, &tok, None, &state).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(config["num_labels"], 1);
    let (reloaded, _) = checkpoint::load(&saved, Device::Cpu).unwrap();
    assert!(reloaded.has_score_head());
    let again = align::read_reward_model(&reloaded, &held_out).unwrap();
    assert!(
        (again.margin - after.margin).abs() < 1e-5,
        "{again:?} vs {after:?}"
    );
}

#[test]
fn pairs_that_cannot_teach_are_refused_with_a_reason() {
    let cases = [
        (
            r#"{"prompt": "p", "chosen": "", "rejected": "no"}"#,
            "chosen response is empty",
        ),
        (
            r#"{"prompt": "p", "chosen": "yes", "rejected": "  "}"#,
            "rejected response is empty",
        ),
        (
            r#"{"prompt": "p", "chosen": "same", "rejected": " same "}"#,
            "are the same",
        ),
        (r#"{"prompt": "p", "chosen": "yes"}"#, "expected"),
        ("not json", "expected"),
    ];
    for (record, why) in cases {
        let error = Pair::parse(record).unwrap_err();
        assert!(error.contains(why), "{record}: {error}");
    }
    let ok = Pair::parse(r#"{"prompt": "p", "chosen": "yes", "rejected": "no", "margin": 1.5}"#)
        .unwrap();
    assert_eq!(ok.margin, Some(1.5));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.jsonl");
    std::fs::write(&file, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"a\"}\n").unwrap();
    let error = preference::read_jsonl(&file).unwrap_err().to_string();
    assert!(
        error.contains("pairs.jsonl:2") && error.contains("the same"),
        "{error}"
    );
    std::fs::write(&file, "\n").unwrap();
    assert!(matches!(
        preference::read_jsonl(&file),
        Err(MlError::Empty(_))
    ));
    assert!(matches!(
        Pairs::new(vec![], 4, 32, 0, 1),
        Err(MlError::Empty(_))
    ));
    let mut c = preference_config(
        1,
        1e-3,
        Objective::Dpo(DpoConfig {
            beta: 0.0,
            loss: DpoLoss::Sigmoid,
        }),
    );
    assert!(c.validate().is_err(), "beta must be positive");
    c.objective = Objective::Dpo(DpoConfig::default());
    c.kl_weight = 0.1;
    assert!(
        c.validate().is_err(),
        "the KL term belongs to the next-token objective"
    );
}

/// A reward model that prefers the corpus's phrases to the same letters shuffled: its
/// checkpoint.
fn judge(dir: &Path) -> std::path::PathBuf {
    let (mut model, tokenizer, _) = pretrained(dir, 400);
    model.add_score_head(Some(11)).unwrap();
    let pairs = interleaved(&tokenizer, false);
    let objective = Objective::Reward(RewardConfig::default());
    let config = preference_config(200, 1e-3, objective);
    let run = dir.join("run");
    train(model, tokenizer, config, &pairs, &run);
    checkpoint::RunDir::new(&run).latest().unwrap().unwrap()
}

#[test]
fn rloo_advantages_are_each_score_less_the_mean_of_the_others() {
    let scores = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0]);
    let advantages: Vec<f32> = leave_one_out(&scores, 4).try_into().unwrap();
    let want = [
        -8.0 / 3.0,
        -4.0 / 3.0,
        0.0,
        4.0,
        -4.0 / 3.0,
        -4.0 / 3.0,
        -4.0 / 3.0,
        4.0,
    ];
    for (got, want) in advantages.iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "{advantages:?}");
    }
}

/// RLOO of a pre-trained policy (LoRA adapters over its base, the reference, initialised
/// from `seed`) for 40 steps on four prompts, two a step, against `judge`: the statistics
/// of every step.
fn rloo_run(dir: &Path, judge: Judge, rloo: RlooConfig, seed: u64) -> Vec<Progress> {
    let (mut policy, tokenizer, _) = pretrained(&dir.join("policy"), 150);
    let adapters = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
    };
    lora::attach(&mut policy, &adapters, seed).unwrap();
    let data = Prompts::new(
        PROMPTS.map(String::from).to_vec(),
        2,
        rloo,
        tokenizer.clone(),
        judge,
        None,
        3,
    )
    .unwrap();
    let mut config = preference_config(40, 3e-3, Objective::Rloo(rloo));
    config.log_interval = 1;
    train(policy, tokenizer, config, &data, &dir.join("run")).1
}

const PROMPTS: [&str; 4] = ["To be", "the question", "the mind", "a sea"];

fn mean(steps: &[Progress], stat: &str) -> f64 {
    steps.iter().map(|p| p.stats[stat]).sum::<f64>() / steps.len() as f64
}

#[test]
fn rloo_raises_the_reward_models_score_of_the_policys_own_completions() {
    let dir = tempfile::tempdir().unwrap();
    let judge_checkpoint = judge(&dir.path().join("judge"));
    let judge = || {
        let (model, tokenizer) = checkpoint::load(&judge_checkpoint, Device::Cpu).unwrap();
        Judge { model, tokenizer }
    };
    let rloo = RlooConfig {
        max_new_tokens: 12,
        ..RlooConfig::default()
    };
    // Over LoRA seeds 1–9 the judge's mean score rose by 0.29–1.17 (0.77 on average) from
    // the first ten steps to the last ten, and the KL to the reference from 0.3–0.9 to
    // 3.6–9.4 nats: at each of three seeds it must rise, and by 0.4 on average.
    let runs: Vec<Vec<Progress>> = (1..=3)
        .map(|seed| {
            rloo_run(
                &dir.path().join(format!("free-{seed}")),
                judge(),
                rloo,
                seed,
            )
        })
        .collect();
    let rises: Vec<f64> = runs
        .iter()
        .map(|r| mean(&r[r.len() - 10..], "reward") - mean(&r[..10], "reward"))
        .collect();
    assert!(
        rises.iter().all(|&rise| rise > 0.0),
        "reward rises {rises:?}"
    );
    assert!(
        rises.iter().sum::<f64>() / 3.0 > 0.4,
        "reward rises {rises:?}"
    );
    for reports in &runs {
        assert!(mean(&reports[reports.len() - 10..], "kl") > mean(&reports[..10], "kl"));
    }
    let last = &runs[0][runs[0].len() - 10..];
    let beta = rloo.beta;
    assert!((mean(last, "score") - (mean(last, "reward") - beta * mean(last, "kl"))).abs() < 1e-4);
    // A heavier penalty keeps the policy nearer its reference, at every seed. (How much
    // nearer depends on the machine's kernels: over seeds 1–9 one machine gave a KL of
    // 0.5–1.7 at β 0.5 against 3.6–9.4 at 0.05; another, at seed 1, 1.83 against 2.36.)
    let held = RlooConfig { beta: 0.5, ..rloo };
    for (seed, far) in (1..=3).zip(&runs) {
        let near = rloo_run(
            &dir.path().join(format!("held-{seed}")),
            judge(),
            held,
            seed,
        );
        let (near, far) = (
            mean(&near[near.len() - 10..], "kl"),
            mean(&far[far.len() - 10..], "kl"),
        );
        assert!(
            near < far,
            "seed {seed}: KL {near} at β 0.5, {far} at β {beta}"
        );
    }

    // What cannot work is refused with a reason.
    let (plain, tokenizer, _) = pretrained(&dir.path().join("plain"), 1);
    let prompts = || PROMPTS.map(String::from).to_vec();
    let one = RlooConfig { samples: 1, ..rloo };
    let error = Prompts::new(prompts(), 2, one, tokenizer.clone(), judge(), None, 3);
    assert!(matches!(error, Err(MlError::Config(_))));
    let no_head = Judge {
        model: pretrained(&dir.path().join("headless"), 1).0,
        tokenizer: tokenizer.clone(),
    };
    let error = Prompts::new(prompts(), 2, rloo, tokenizer.clone(), no_head, None, 3);
    assert!(matches!(error, Err(MlError::Config(_))));
    let no_reference = Prompts::new(prompts(), 1, rloo, tokenizer, judge(), None, 3).unwrap();
    let error = no_reference
        .batch_from(0, Device::Cpu, &plain)
        .err()
        .unwrap();
    assert!(error.to_string().contains("reference"), "{error}");
}
