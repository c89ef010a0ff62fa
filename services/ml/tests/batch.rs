//! Continuous batching: a decode step over rows of different lengths gives each row the
//! logits its own cached forward gives, and every generation in a running batch returns
//! exactly what `generate` returns for it alone, with the batch's limits, cancellation and
//! bad requests handled per request.

mod common;

use common::{max_diff, pretrained};
use quark_ml::Tokenizer;
use quark_ml::batch::{BatchLimits, Engine, Pending, generate_all};
use quark_ml::generate::{FinishReason, GenerateOptions, Generation, generate, prompt_logprobs};
use quark_ml::gpt::{Context, Gpt, KvCache, SlotCache};
use std::ops::ControlFlow;
use std::sync::mpsc;
use tch::Tensor;

fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, false).unwrap().get_ids().to_vec()
}

fn tensor(ids: &[u32]) -> Tensor {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_slice(&ids).view([1, -1])
}

/// The next-token logits `[vocab]` of `prompt` read alone.
fn prompt_logits(model: &Gpt, prompt: &[u32]) -> Tensor {
    model
        .forward(&tensor(prompt), &Context::default(), None, false)
        .unwrap()
        .get(0)
        .get(-1)
}

/// The next-token logits `[vocab]` of `prompt` followed by `then`, through a sequence cache.
fn cached_logits(model: &Gpt, prompt: &[u32], then: u32) -> Tensor {
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

fn assert_rows(step: &Tensor, expected: &[Tensor]) {
    assert_eq!(step.size()[0], expected.len() as i64);
    for (row, alone) in expected.iter().enumerate() {
        let diff = max_diff(&step.get(row as i64), alone);
        assert!(diff < 1e-5, "row {row}: logits differ by {diff}");
    }
}

#[test]
fn a_step_gives_each_row_its_own_sequences_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokenizer, _) = pretrained(dir.path(), 40);
    let prompts: Vec<Vec<u32>> = ["To be", "Whether 'tis nobler in", "Or"]
        .iter()
        .map(|p| ids(&tokenizer, p))
        .collect();
    let lengths: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    let next = ids(&tokenizer, "e")[0];
    let after = |prompt: &[u32], more: usize| {
        let mut seq = prompt.to_vec();
        seq.extend(std::iter::repeat_n(next, more));
        cached_logits(&model, &seq, next)
    };
    tch::no_grad(|| {
        let mut slots = SlotCache::new(model.config.block_size);
        // Two prompts read in one pass.
        let first = model
            .step(&[], &[&prompts[0], &prompts[1]], &mut slots)
            .unwrap();
        assert_eq!(first.size(), [2, model.config.vocab_size]);
        let alone: Vec<Tensor> = prompts[..2]
            .iter()
            .map(|p| prompt_logits(&model, p))
            .collect();
        assert_rows(&first, &alone);
        assert_eq!(slots.lengths(), &lengths[..2]);
        // Those two decode while the third prompt is read in the same pass.
        let mixed = model.step(&[next; 2], &[&prompts[2]], &mut slots).unwrap();
        let expected = [
            after(&prompts[0], 0),
            after(&prompts[1], 0),
            prompt_logits(&model, &prompts[2]),
        ];
        assert_rows(&mixed, &expected);
        assert_eq!(
            slots.lengths(),
            [lengths[0] + 1, lengths[1] + 1, lengths[2]]
        );
        // The middle row leaves; the last takes its place and still reads its own positions.
        slots.swap_remove(1).unwrap();
        assert_eq!(slots.lengths(), [lengths[0] + 1, lengths[2]]);
        let again = model.step(&[next; 2], &[], &mut slots).unwrap();
        assert_rows(&again, &[after(&prompts[0], 1), after(&prompts[2], 0)]);
        // A prompt longer than the model's context is refused before the pass.
        let long = vec![next; model.config.block_size as usize + 1];
        assert!(model.step(&[next; 2], &[&long], &mut slots).is_err());
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
                        streamed.push_str(piece.text);
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
    // The prompts were read in the pass that took every first token: one pass per token.
    assert_eq!(
        load.decode_steps, longest,
        "one pass serves the whole batch: {load:?}"
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
        // One intra-op thread, as the gateway runs it: the same tokens as alone.
        threads: 1,
    };
    // The same batch run on the calling thread (as the evaluator runs it) gives them too;
    // one request that cannot run fails the call.
    let together = generate_all(&model, &tokenizer, requests.clone(), limits).unwrap();
    let tokens: Vec<&Vec<u32>> = together.iter().map(|g| &g.tokens).collect();
    assert_eq!(tokens, alone.iter().collect::<Vec<_>>());
    let mut bad = requests.clone();
    bad[5].0.clear();
    assert!(generate_all(&model, &tokenizer, bad, limits).is_err());
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
