//! The model, training loop, SFT and generation on real libtorch (CPU), on small corpora.

use quark_ml::chat::{self, Message, Role};
use quark_ml::checkpoint::{self, RunDir};
use quark_ml::data::{Batches, Example, Mixture, Packed, Windows, validation_batches};
use quark_ml::generate::{FinishReason, GenerateOptions, generate};
use quark_ml::gpt::{Context, Gpt, GptConfig, KvCache};
use quark_ml::shards::{self, Shard};
use quark_ml::tokenizer::{self, END_OF_TEXT};
use quark_ml::train::{Trainer, evaluate};
use quark_ml::{MlError, Tokenizer};
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

mod common;
use common::{TEXT, config, corpus, shape};

fn weights(model: &Gpt) -> Vec<(String, Tensor)> {
    let mut named: Vec<_> = model.vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

#[test]
fn loss_falls_below_a_bound_on_a_small_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, train, val) = corpus(dir.path());
    let vocab = tokenizer.get_vocab_size(true);
    let model = Gpt::new(shape(vocab, 0.0), Device::Cpu, 1).unwrap();
    let val = validation_batches(&val, 32, 16, None, Device::Cpu).unwrap();
    let before = evaluate(&model, &val).unwrap();
    // Untrained: close to uniform over the vocabulary.
    assert!((before - (vocab as f64).ln()).abs() < 0.5, "{before}");
    let data = Windows::new(train, 8, 32, 7).unwrap();
    let mut trainer =
        Trainer::start(model, tokenizer, config(150), None, &dir.path().join("run")).unwrap();
    let mut reports = vec![];
    let outcome = trainer
        .run(&data, Some(&val), |p| {
            if let Some(loss) = p.loss {
                reports.push((p.step, loss, p.tokens_per_s.unwrap(), p.mfu.unwrap()));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    let after = outcome.state.val_loss.unwrap();
    // A memorisable text: a 2-layer model gets well under 1 nat per character in 150 steps.
    assert!(after < 1.0, "validation loss {after} (from {before})");
    assert_eq!(reports.len(), 30, "every log_interval steps");
    assert!(reports.last().unwrap().1 < reports[0].1 / 2.0);
    assert!(reports.iter().all(|r| r.2 > 0.0 && r.3 > 0.0 && r.3 < 1.0));
    assert_eq!(outcome.state.tokens, 150 * 2 * 8 * 32);
    assert!(!outcome.stopped);
    // The final checkpoint loads back to the same weights.
    let (loaded, _) = checkpoint::load(&outcome.checkpoint, Device::Cpu).unwrap();
    for ((name, a), (_, b)) in weights(&trainer.model).iter().zip(weights(&loaded)) {
        assert!(a.equal(&b), "{name}");
    }
}

#[test]
fn a_stopped_and_resumed_run_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, train, _) = corpus(dir.path());
    let vocab = tokenizer.get_vocab_size(true);
    // Dropout on, so the resumed run must also reproduce the random masks.
    let straight_model = Gpt::new(shape(vocab, 0.1), Device::Cpu, 3).unwrap();
    let data = Windows::new(train, 8, 32, 7).unwrap();
    let mut cfg = config(24);
    cfg.checkpoint_interval = 10;
    let mut straight = Trainer::start(
        straight_model,
        tokenizer.clone(),
        cfg.clone(),
        None,
        &dir.path().join("a"),
    )
    .unwrap();
    straight
        .run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap();

    let model = Gpt::new(shape(vocab, 0.1), Device::Cpu, 3).unwrap();
    let run = dir.path().join("b");
    let mut first = Trainer::start(model, tokenizer, cfg, None, &run).unwrap();
    let stopped = first
        .run(&data, None, |p| {
            if p.step == 13 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert!(stopped.stopped);
    assert_eq!(stopped.state.step, 13);
    assert!(stopped.checkpoint.ends_with("step-00000013"));
    drop(first);

    let mut resumed = Trainer::resume(&run, Device::Cpu).unwrap();
    assert_eq!(resumed.state().step, 13);
    let outcome = resumed
        .run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(outcome.state.step, 24);
    assert_eq!(outcome.state.tokens, straight.state().tokens);
    for ((name, a), (_, b)) in weights(&straight.model).iter().zip(weights(&resumed.model)) {
        assert!(a.equal(&b), "{name} differs after resume");
    }
    // Only the newest checkpoints are kept, and `latest` names the last.
    let latest = RunDir::new(&run).latest().unwrap().unwrap();
    assert!(latest.ends_with("step-00000024"));
    let kept: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
}

fn tiny(seed: u64) -> (Gpt, Tokenizer) {
    let tokenizer = tokenizer::train_chars(TEXT).unwrap();
    let model = Gpt::new(
        shape(tokenizer.get_vocab_size(true), 0.0),
        Device::Cpu,
        seed,
    )
    .unwrap();
    (model, tokenizer)
}

#[test]
fn cached_generation_equals_uncached() {
    let (model, tokenizer) = tiny(11);
    let prompt = tokenizer.encode("To be", false).unwrap().get_ids().to_vec();
    // Logits of the cached step equal the full forward pass at that position.
    tch::no_grad(|| {
        let ids =
            Tensor::from_slice(&prompt.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([1, -1]);
        let full = model
            .forward(&ids, &Context::default(), None, false)
            .unwrap();
        let mut cache = KvCache::default();
        let head = model
            .forward(
                &ids.narrow(1, 0, 3),
                &Context::default(),
                Some(&mut cache),
                false,
            )
            .unwrap();
        let tail = model
            .forward(
                &ids.narrow(1, 3, 2),
                &Context::default(),
                Some(&mut cache),
                false,
            )
            .unwrap();
        assert_eq!(cache.len(), 5);
        let stepped = Tensor::cat(&[head, tail], 1);
        let diff = (&full - &stepped).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "cached logits differ by {diff}");
    });
    for (temperature, top_k, top_p) in [
        (0.0, None, None),
        (0.9, Some(10), None),
        (1.0, None, Some(0.9)),
    ] {
        let options = GenerateOptions {
            max_tokens: 20,
            temperature,
            top_k,
            top_p,
            seed: 5,
            ..Default::default()
        };
        let cached = generate(&model, &tokenizer, &prompt, &options, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let uncached = generate(
            &model,
            &tokenizer,
            &prompt,
            &GenerateOptions {
                use_cache: false,
                ..options.clone()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!(cached.tokens, uncached.tokens, "temperature {temperature}");
        assert_eq!(cached.tokens.len(), 20);
        assert_eq!(cached.finish, FinishReason::Length);
    }
    // The context runs out before the budget: 32 positions, 5 in the prompt.
    let long = generate(
        &model,
        &tokenizer,
        &prompt,
        &GenerateOptions {
            max_tokens: 100,
            ..Default::default()
        },
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(long.tokens.len(), 27);
    assert_eq!(long.finish, FinishReason::Length);
}

#[test]
fn streaming_stops_at_stop_sequences_and_never_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, train, _) = corpus(dir.path());
    let model = Gpt::new(shape(tokenizer.get_vocab_size(true), 0.0), Device::Cpu, 2).unwrap();
    let data = Windows::new(train, 8, 32, 7).unwrap();
    let mut trainer =
        Trainer::start(model, tokenizer, config(300), None, &dir.path().join("run")).unwrap();
    trainer
        .run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap();
    let prompt = trainer
        .tokenizer
        .encode("To be, or not", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let greedy = |stop: Vec<String>| {
        let mut pieces = vec![];
        let generation = generate(
            &trainer.model,
            &trainer.tokenizer,
            &prompt,
            &GenerateOptions {
                max_tokens: 15,
                stop,
                ..Default::default()
            },
            |piece| {
                pieces.push(piece.text.to_string());
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        (generation, pieces)
    };
    // The memorised continuation.
    let (free, pieces) = greedy(vec![]);
    assert_eq!(free.text, " to be, that is");
    assert_eq!(pieces.concat(), free.text);
    assert_eq!(pieces.len(), 15, "one piece per character");
    let (stopped, pieces) = greedy(vec!["that".into()]);
    assert_eq!(stopped.text, " to be, ");
    assert_eq!(stopped.finish, FinishReason::Stop);
    assert_eq!(
        pieces.concat(),
        " to be, ",
        "the stop sequence is never streamed"
    );
    // The caller can cut the stream.
    let mut seen = 0;
    let cut = generate(
        &trainer.model,
        &trainer.tokenizer,
        &prompt,
        &GenerateOptions::default(),
        |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap();
    assert_eq!(cut.finish, FinishReason::Cancelled);
    assert_eq!(cut.tokens.len(), 3);
}

/// Texts as examples scored on every token.
fn plain_examples(tokenizer: &Tokenizer, texts: &[&str]) -> Vec<Example> {
    texts
        .iter()
        .map(|t| {
            let ids = tokenizer.encode(*t, false).unwrap().get_ids().to_vec();
            Example {
                scored: vec![true; ids.len()],
                ids,
            }
        })
        .collect()
}

#[test]
fn packed_examples_see_only_themselves() {
    let (model, tokenizer) = tiny(4);
    let examples = plain_examples(&tokenizer, &["To be", "or not to", "the question"]);
    let packed = Packed::new(&examples, 1, 32, 0, 1).unwrap();
    let rows = packed.sequential(Device::Cpu);
    assert_eq!(rows.len(), 1, "all three fit one row of 32");
    let row = &rows[0];
    // 4 + 8 + 11 scored targets; the rest is padding.
    assert_eq!(row.scored_tokens(), 23);
    tch::no_grad(|| {
        let packed_logits = model
            .forward(&row.input, &row.context(), None, false)
            .unwrap();
        let mut offset = 0;
        for example in &examples {
            let n = example.ids.len() as i64 - 1;
            let ids: Vec<i64> = example.ids[..n as usize]
                .iter()
                .map(|&t| t as i64)
                .collect();
            let alone = model
                .forward(
                    &Tensor::from_slice(&ids).view([1, -1]),
                    &Context::default(),
                    None,
                    false,
                )
                .unwrap();
            let diff = (&alone - packed_logits.narrow(1, offset, n))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "example at {offset} differs by {diff}");
            offset += n;
        }
    });
}

#[test]
fn a_mixture_is_packed_examples_and_fresh_windows_each_read_from_position_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, train, _) = corpus(dir.path());
    let (model, _) = tiny(6);
    let examples = plain_examples(&tokenizer, &["To be", "or not to"]);
    let shard = || Shard::open(&dir.path().join("train.tok")).unwrap();
    let mixture = Mixture::new(
        Packed::new(&examples, 2, 32, 0, 1).unwrap(),
        Windows::new(train, 3, 32, 9).unwrap(),
    )
    .unwrap();
    let (packed, windows) = (
        Packed::new(&examples, 2, 32, 0, 1).unwrap(),
        Windows::new(shard(), 3, 32, 9).unwrap(),
    );
    assert_eq!(mixture.tokens_per_batch(), 5 * 32);
    let batch = mixture.batch(4, Device::Cpu).unwrap();
    assert_eq!(batch.input.size(), [5, 32]);
    let (rows, text) = (
        packed.batch(4, Device::Cpu).unwrap(),
        windows.batch(4, Device::Cpu).unwrap(),
    );
    assert!(batch.input.narrow(0, 0, 2).equal(&rows.input));
    assert!(batch.target.narrow(0, 2, 3).equal(&text.target));
    // The windows, scored with the mixture's positions and mask, give the logits they give
    // alone as plain causal sequences.
    tch::no_grad(|| {
        let mixed = model
            .forward(&batch.input, &batch.context(), None, false)
            .unwrap()
            .narrow(0, 2, 3);
        let alone = model
            .forward(&text.input, &Context::default(), None, false)
            .unwrap();
        let diff = (mixed - alone).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "windows differ by {diff}");
    });
    // A resumed run reads the same batch; the next step reads other windows.
    let again = mixture.batch(4, Device::Cpu).unwrap();
    assert!(again.input.equal(&batch.input));
    let next = mixture.batch(5, Device::Cpu).unwrap();
    assert!(
        !next
            .input
            .narrow(0, 2, 3)
            .equal(&batch.input.narrow(0, 2, 3))
    );

    let error = Mixture::new(
        Packed::new(&examples, 2, 16, 0, 1).unwrap(),
        Windows::new(shard(), 3, 32, 9).unwrap(),
    )
    .err()
    .expect("rows and windows of different lengths cannot be mixed");
    assert!(error.to_string().contains("16"), "{error}");
}

#[test]
fn sft_learns_assistant_replies_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, train, _) = corpus(dir.path());
    let model = Gpt::new(shape(tokenizer.get_vocab_size(true), 0.0), Device::Cpu, 5).unwrap();
    let mut pretrain =
        Trainer::start(model, tokenizer, config(40), None, &dir.path().join("base")).unwrap();
    let base = pretrain
        .run(&Windows::new(train, 8, 32, 7).unwrap(), None, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .checkpoint;
    drop(pretrain);

    let (model, tokenizer) = checkpoint::load(&base, Device::Cpu).unwrap();
    let conversations: Vec<Vec<Message>> = [("to be?", "or not"), ("the?", "question")]
        .iter()
        .map(|(q, a)| {
            vec![
                Message::new(Role::User, *q),
                Message::new(Role::Assistant, *a),
            ]
        })
        .collect();
    let examples: Vec<Example> = conversations
        .iter()
        .map(|c| chat::render(&tokenizer, c).unwrap())
        .collect();
    let packed = Packed::new(&examples, 4, 32, 0, 3).unwrap();
    let validation = packed.sequential(Device::Cpu);
    // Only the replies and their end-of-text are scored: 6 + 1 and 8 + 1.
    assert_eq!(
        validation.iter().map(|b| b.scored_tokens()).sum::<i64>(),
        16
    );
    let before = evaluate(&model, &validation).unwrap();
    let mut cfg = config(60);
    cfg.batch_size = 4;
    cfg.grad_accum = 1;
    let mut sft = Trainer::start(
        model,
        tokenizer,
        cfg,
        Some(base.clone()),
        &dir.path().join("sft"),
    )
    .unwrap();
    let outcome = sft
        .run(&packed, Some(&validation), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(outcome.state.parent.as_deref(), Some(base.as_path()));
    let after = outcome.state.val_loss.unwrap();
    assert!(after < before / 4.0, "SFT loss {before} -> {after}");
    for conversation in &conversations {
        let prompt = chat::prompt(&sft.tokenizer, &conversation[..1]).unwrap();
        let reply = generate(
            &sft.model,
            &sft.tokenizer,
            &prompt,
            &GenerateOptions {
                max_tokens: 20,
                stop_tokens: chat::stop_tokens(&sft.tokenizer),
                ..Default::default()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!(reply.text, conversation[1].content);
        assert_eq!(reply.finish, FinishReason::Stop, "ends at end-of-text");
    }
}

#[test]
fn bf16_compute_stays_close_to_fp32() {
    let (mut model, tokenizer) = tiny(9);
    let ids: Vec<i64> = tokenizer.encode(TEXT, false).unwrap().get_ids()[..32]
        .iter()
        .map(|&t| t as i64)
        .collect();
    let ids = Tensor::from_slice(&ids).view([1, -1]);
    let fp32 = tch::no_grad(|| {
        model
            .forward(&ids, &Context::default(), None, false)
            .unwrap()
    });
    model.set_compute(Kind::BFloat16);
    let bf16 = tch::no_grad(|| {
        model
            .forward(&ids, &Context::default(), None, false)
            .unwrap()
    });
    assert_eq!(bf16.kind(), Kind::Float, "logits come back in fp32");
    let diff = (&fp32 - &bf16).abs().max().double_value(&[]);
    assert!(
        diff > 0.0 && diff < 0.05,
        "bf16 vs fp32 logits differ by {diff}"
    );
    // Parameters stay fp32.
    assert!(
        model
            .vs
            .trainable_variables()
            .iter()
            .all(|t| t.kind() == Kind::Float)
    );
}

#[test]
fn bad_inputs_are_clear_errors_and_overwrite_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, train, _) = corpus(dir.path());
    let vocab = tokenizer.get_vocab_size(true);

    // Missing checkpoint, corrupt weights.
    let missing = checkpoint::load(&dir.path().join("nope"), Device::Cpu)
        .err()
        .unwrap();
    assert!(
        missing.to_string().contains("no such checkpoint"),
        "{missing}"
    );
    let model = Gpt::new(shape(vocab, 0.0), Device::Cpu, 1).unwrap();
    let ckpt = dir.path().join("ckpt");
    checkpoint::save(&ckpt, &model, &tokenizer, None, &serde_json::json!({})).unwrap();
    let weights_path = ckpt.join(checkpoint::WEIGHTS);
    let original = std::fs::read(&weights_path).unwrap();
    std::fs::write(&weights_path, &original[..original.len() / 2]).unwrap();
    let corrupt = checkpoint::load(&ckpt, Device::Cpu).err().unwrap();
    assert!(matches!(corrupt, MlError::Checkpoint(_)), "{corrupt}");
    // Saving over an existing checkpoint is refused.
    let again = checkpoint::save(&ckpt, &model, &tokenizer, None, &serde_json::json!({}));
    assert!(
        again
            .unwrap_err()
            .to_string()
            .contains("refusing to overwrite")
    );
    assert_eq!(
        std::fs::read(&weights_path).unwrap().len(),
        original.len() / 2
    );

    // A tokenizer larger than the model's vocabulary.
    let small = Gpt::new(shape(vocab - 3, 0.0), Device::Cpu, 1).unwrap();
    let err = Trainer::start(
        small,
        tokenizer.clone(),
        config(5),
        None,
        &dir.path().join("r1"),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let big_tokenizer = tokenizer::train_chars(&format!("{TEXT}XYZ")).unwrap();
    let small_ckpt = dir.path().join("small");
    let small = Gpt::new(shape(vocab, 0.0), Device::Cpu, 1).unwrap();
    checkpoint::save(
        &small_ckpt,
        &small,
        &big_tokenizer,
        None,
        &serde_json::json!({}),
    )
    .unwrap();
    let err = checkpoint::load(&small_ckpt, Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("tokenizer has"), "{err}");

    // A second run into a directory that holds one.
    let run = dir.path().join("run");
    let mut trainer = Trainer::start(
        Gpt::new(shape(vocab, 0.0), Device::Cpu, 1).unwrap(),
        tokenizer.clone(),
        config(3),
        None,
        &run,
    )
    .unwrap();
    let data = Windows::new(train, 8, 32, 7).unwrap();
    trainer
        .run(&data, None, |_| ControlFlow::Continue(()))
        .unwrap();
    let err = Trainer::start(
        Gpt::new(shape(vocab, 0.0), Device::Cpu, 1).unwrap(),
        tokenizer.clone(),
        config(3),
        None,
        &run,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("already holds a run"), "{err}");
    assert!(Trainer::resume(&dir.path().join("empty"), Device::Cpu).is_err());

    // Longer than the model's block, an empty shard, an empty prompt.
    let too_long = Tensor::zeros([1, 33], (Kind::Int64, Device::Cpu));
    let err = trainer
        .model
        .forward(&too_long, &Context::default(), None, false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("block size 32"), "{err}");
    let prompt = vec![1u32; 40];
    assert!(
        generate(
            &trainer.model,
            &tokenizer,
            &prompt,
            &GenerateOptions::default(),
            |_| ControlFlow::Continue(())
        )
        .is_err()
    );
    assert!(
        generate(
            &trainer.model,
            &tokenizer,
            &[],
            &GenerateOptions::default(),
            |_| ControlFlow::Continue(())
        )
        .is_err()
    );
    let tiny_shard = dir.path().join("tiny.tok");
    shards::write(&tokenizer, &["To".into()], &tiny_shard).unwrap();
    let err = Windows::new(Shard::open(&tiny_shard).unwrap(), 8, 32, 1)
        .err()
        .unwrap();
    assert!(matches!(err, MlError::Empty(_)), "{err}");
    assert!(
        validation_batches(&Shard::open(&tiny_shard).unwrap(), 32, 8, None, Device::Cpu).is_err()
    );
    assert!(Packed::new(&[], 4, 32, 0, 1).is_err());
    let end = tokenizer.token_to_id(END_OF_TEXT).unwrap();
    let unscored = Example {
        ids: vec![end, end],
        scored: vec![false, false],
    };
    assert!(
        Packed::new(&[unscored], 4, 32, 0, 1).is_err(),
        "nothing to learn from"
    );
    let bad_shape = GptConfig {
        n_head: 3,
        ..shape(vocab, 0.0)
    };
    assert!(Gpt::new(bad_shape, Device::Cpu, 1).is_err());
}
