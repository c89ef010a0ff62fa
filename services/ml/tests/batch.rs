//! Continuous batching: a decode step over rows of different lengths gives each row the
//! logits its own cached forward gives, and every generation in a running batch returns
//! exactly what `generate` returns for it alone, with the batch's limits, cancellation and
//! bad requests handled per request.

mod common;

use common::{max_diff, pretrained};
use quark_ml::Tokenizer;
use quark_ml::batch::{BatchLimits, Engine, Pending};
use quark_ml::generate::{FinishReason, GenerateOptions, Generation, generate, prompt_logprobs};
use quark_ml::gpt::{Context, Gpt, KvCache, SlotCache};
use std::ops::ControlFlow;
use std::sync::mpsc;
use tch::Tensor;

fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, false).unwrap().get_ids().to_vec()
}

/// The next-token logits `[vocab]` of `prompt` followed by `then`, through a sequence cache.
fn cached_logits(model: &Gpt, prompt: &[u32], then: u32) -> Tensor {
    let tensor = |ids: &[u32]| {
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        Tensor::from_slice(&ids).view([1, -1])
    };
    let mut cache = KvCache::default();
    let context = Context::default();
    let _prefill = model
        .forward(&tensor(prompt), &context, Some(&mut cache), false)
        .unwrap();
    model
        .forward(&tensor(&[then]), &context, Some(&mut cache), false)
        .unwrap()
        .get(0)
        .get(0)
}

#[test]
fn a_decode_step_gives_each_row_its_own_sequences_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 40);
    let prompts: Vec<Vec<u32>> = ["To be", "Whether 'tis nobler in", "Or"]
        .iter()
        .map(|p| ids(&tokenizer, p))
        .collect();
    let next = ids(&tokenizer, "e")[0];
    tch::no_grad(|| {
        let mut slots = SlotCache::new(model.config.block_size);
        for prompt in &prompts {
            let mut cache = KvCache::default();
            let idx = Tensor::from_slice(&prompt.iter().map(|&t| t as i64).collect::<Vec<_>>());
            let _prefill = model
                .forward(
                    &idx.view([1, -1]),
                    &Context::default(),
                    Some(&mut cache),
                    false,
                )
                .unwrap();
            slots.push(&cache).unwrap();
        }
        let lengths: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
        assert_eq!(slots.lengths(), lengths.as_slice());
        let batched = model.decode_step(&[next; 3], &mut slots).unwrap();
        assert_eq!(batched.size(), [3, model.config.vocab_size]);
        for (row, prompt) in prompts.iter().enumerate() {
            let alone = cached_logits(&model, prompt, next);
            let diff = max_diff(&batched.get(row as i64), &alone);
            assert!(diff < 1e-5, "row {row}: logits differ by {diff}");
        }
        // The middle row leaves; the last takes its place and still reads its own positions.
        slots.swap_remove(1).unwrap();
        assert_eq!(slots.lengths(), [lengths[0] + 1, lengths[2] + 1]);
        let again = model.decode_step(&[next; 2], &mut slots).unwrap();
        let alone = {
            let mut seq = prompts[2].clone();
            seq.push(next);
            cached_logits(&model, &seq, next)
        };
        let diff = max_diff(&again.get(1), &alone);
        assert!(diff < 1e-5, "the moved row's logits differ by {diff}");
    });
}

/// Requests unlike each other in every way the batch must keep apart.
fn varied_requests(tokenizer: &Tokenizer, count: usize) -> Vec<(Vec<u32>, GenerateOptions)> {
    let prompts = [
        "To be",
        "Whether 'tis",
        "The slings and",
        "Or to take arms",
        "And by",
    ];
    let end = ids(tokenizer, ":")[0];
    (0..count)
        .map(|i| {
            let options = GenerateOptions {
                max_tokens: 2 + (i * 7) % 25,
                temperature: [0.0, 0.8, 1.2][i % 3],
                top_k: (i % 4 == 1).then_some(8),
                top_p: (i % 5 == 2).then_some(0.9),
                stop: if i % 6 == 3 {
                    vec!["the".into()]
                } else {
                    vec![]
                },
                stop_tokens: if i % 7 == 4 { vec![end] } else { vec![] },
                seed: 1000 + i as u64,
                logprobs: (i % 3 == 0).then_some(2),
                ..Default::default()
            };
            (ids(tokenizer, prompts[i % prompts.len()]), options)
        })
        .collect()
}

/// Waits for each pending generation on a thread of its own; each with the pieces it streamed.
fn wait_all(pending: Vec<Pending>) -> Vec<(Generation, String)> {
    let threads: Vec<_> = pending
        .into_iter()
        .map(|p| {
            std::thread::spawn(move || {
                let mut streamed = String::new();
                let generation = p
                    .wait(|piece| {
                        streamed.push_str(piece);
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                (generation, streamed)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Holds the engine's thread until the returned sender is dropped: everything asked
/// meanwhile is waiting when it resumes.
fn hold(engine: &std::sync::Arc<Engine>) -> mpsc::Sender<()> {
    let (release, held) = mpsc::channel::<()>();
    let (started, running) = mpsc::channel();
    let engine = engine.clone();
    std::thread::spawn(move || {
        engine
            .with_model(move |_, _| {
                started.send(()).unwrap();
                let _ = held.recv();
            })
            .unwrap();
    });
    running.recv().unwrap();
    release
}

#[test]
fn every_generation_in_a_batch_returns_what_it_returns_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 60);
    let requests = varied_requests(&tokenizer, 48);
    let alone: Vec<Generation> = requests
        .iter()
        .map(|(prompt, options)| {
            generate(&model, &tokenizer, prompt, options, |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
        })
        .collect();
    let engine = std::sync::Arc::new(
        Engine::spawn(model, tokenizer.clone(), BatchLimits::default()).unwrap(),
    );
    let release = hold(&engine);
    let pending: Vec<Pending> = requests
        .iter()
        .map(|(prompt, options)| engine.submit(prompt, options).unwrap())
        .collect();
    drop(release);
    let batched = wait_all(pending);
    let load = engine.load();
    assert_eq!(load.peak_running, 48, "all 48 ran in one batch: {load:?}");
    let longest = alone.iter().map(|g| g.tokens.len()).max().unwrap();
    assert!(
        load.decode_steps < longest,
        "one decode step serves the whole batch: {load:?}"
    );
    let mut stops = 0;
    for (i, ((generation, streamed), expected)) in batched.iter().zip(&alone).enumerate() {
        assert_eq!(generation.tokens, expected.tokens, "request {i}");
        assert_eq!(generation.text, expected.text, "request {i}");
        assert_eq!(generation.finish, expected.finish, "request {i}");
        assert_eq!(streamed, &expected.text, "request {i} streamed its text");
        assert_eq!(generation.logprobs.len(), expected.logprobs.len());
        for (a, b) in generation.logprobs.iter().zip(&expected.logprobs) {
            assert_eq!(a.token, b.token);
            assert!((a.logprob - b.logprob).abs() < 1e-4, "request {i}");
            let tops = |t: &[(u32, f64)]| t.iter().map(|(id, _)| *id).collect::<Vec<_>>();
            assert_eq!(tops(&a.top), tops(&b.top), "request {i}");
        }
        stops += (generation.finish == FinishReason::Stop) as usize;
    }
    assert!(stops > 0, "some requests ended at a stop");
    let after = engine.load();
    assert_eq!((after.running, after.waiting), (0, 0));
}

#[test]
fn the_limits_bound_the_batch_and_the_rest_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 40);
    let requests = varied_requests(&tokenizer, 12);
    let alone: Vec<Vec<u32>> = requests
        .iter()
        .map(|(p, o)| {
            generate(&model, &tokenizer, p, o, |_| ControlFlow::Continue(()))
                .unwrap()
                .tokens
        })
        .collect();
    let limits = BatchLimits {
        max_requests: 4,
        max_tokens: 10_000,
        max_prefill_tokens: 1_000,
    };
    let engine = std::sync::Arc::new(Engine::spawn(model, tokenizer, limits).unwrap());
    let release = hold(&engine);
    let pending: Vec<Pending> = requests
        .iter()
        .map(|(p, o)| engine.submit(p, o).unwrap())
        .collect();
    drop(release);
    let batched = wait_all(pending);
    assert_eq!(engine.load().peak_running, 4);
    for (i, ((g, _), expected)) in batched.iter().zip(&alone).enumerate() {
        assert_eq!(&g.tokens, expected, "request {i}");
    }
}

#[test]
fn a_cancelled_or_bad_request_ends_alone_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 40);
    let prompt = ids(&tokenizer, "To be, or not");
    let long = GenerateOptions {
        max_tokens: 15,
        ..Default::default()
    };
    let expected = generate(&model, &tokenizer, &prompt, &long, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let scored = prompt_logprobs(&model, &prompt, 1).unwrap();
    let engine =
        std::sync::Arc::new(Engine::spawn(model, tokenizer, BatchLimits::default()).unwrap());
    let release = hold(&engine);
    let cut = engine.submit(&prompt, &long).unwrap();
    let whole = engine.submit(&prompt, &long).unwrap();
    let empty = engine.submit(&[], &long).unwrap();
    let too_long = engine.submit(&[prompt[0]; 40], &long).unwrap();
    drop(release);
    let mut seen = 0;
    let cut = cut
        .wait(|_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(cut.finish, FinishReason::Cancelled);
    assert_eq!(cut.tokens, expected.tokens[..3]);
    let whole = whole.wait(|_| ControlFlow::Continue(())).unwrap();
    assert_eq!(
        whole.tokens, expected.tokens,
        "the request beside it is untouched"
    );
    let refused = |p: Pending| {
        p.wait(|_| ControlFlow::Continue(()))
            .unwrap_err()
            .to_string()
    };
    assert!(refused(empty).contains("the prompt is empty"));
    assert!(refused(too_long).contains("the model's context is 32"));
    // Other work on the model runs between decode steps.
    let again = engine
        .with_model(move |model, _| prompt_logprobs(model, &prompt, 1).unwrap())
        .unwrap();
    assert_eq!(again, scored);
}
