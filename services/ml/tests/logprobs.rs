//! Log-probabilities on real libtorch (CPU): what generation records of its tokens is what
//! one forward pass over the prompt and the answer gives at those positions.

use quark_ml::generate::{FinishReason, GenerateOptions, generate, prompt_logprobs};
use quark_ml::gpt::Gpt;
use quark_ml::tokenizer;
use std::ops::ControlFlow;
use tch::Device;

mod common;
use common::{TEXT, shape};

#[test]
fn generated_logprobs_are_the_models_and_the_greedy_token_is_the_most_likely() {
    let tokenizer = tokenizer::train_chars(TEXT).unwrap();
    let vocab = tokenizer.get_vocab_size(true);
    let model = Gpt::new(shape(vocab, 0.0), Device::Cpu, 3).unwrap();
    let prompt = tokenizer.encode("To be", false).unwrap().get_ids().to_vec();
    for temperature in [0.0, 1.0] {
        let options = GenerateOptions {
            max_tokens: 12,
            temperature,
            seed: 9,
            logprobs: Some(3),
            ..Default::default()
        };
        let generation = generate(&model, &tokenizer, &prompt, &options, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(generation.logprobs.len(), generation.tokens.len());
        let whole = [prompt.clone(), generation.tokens.clone()].concat();
        let read = prompt_logprobs(&model, &whole, 3).unwrap();
        assert_eq!(read.len(), whole.len());
        assert!(read[0].is_none(), "the first token has no context");
        for (i, recorded) in generation.logprobs.iter().enumerate() {
            let again = read[prompt.len() + i].as_ref().unwrap();
            assert_eq!(recorded.token, generation.tokens[i]);
            assert_eq!(again.token, recorded.token);
            assert!(
                (again.logprob - recorded.logprob).abs() < 1e-4,
                "{again:?} {recorded:?}"
            );
            assert_eq!(recorded.top.len(), 3);
            assert!(
                recorded.top.windows(2).all(|w| w[0].1 >= w[1].1),
                "{recorded:?}"
            );
            assert!(recorded.logprob <= recorded.top[0].1 + 1e-9);
            if temperature == 0.0 {
                assert_eq!(
                    recorded.top[0].0, recorded.token,
                    "greedy takes the most likely"
                );
            }
        }
    }
    // Over the whole vocabulary the probabilities sum to one.
    let read = prompt_logprobs(&model, &prompt, vocab).unwrap();
    for position in read.iter().flatten() {
        let total: f64 = position.top.iter().map(|(_, l)| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
    }
    let block = model.config.block_size as usize;
    assert!(prompt_logprobs(&model, &[], 0).is_err());
    assert!(prompt_logprobs(&model, &vec![1; block + 1], 0).is_err());
}

/// Streamed, each piece carries the readings of the tokens decided since the one before:
/// joined, they are the generation's, even when a stop sequence removes the last tokens'
/// text (their readings come with the last, empty, piece).
#[test]
fn streamed_pieces_carry_the_readings_of_their_tokens() {
    let tokenizer = tokenizer::train_chars(TEXT).unwrap();
    let model = Gpt::new(shape(tokenizer.get_vocab_size(true), 0.0), Device::Cpu, 5).unwrap();
    let prompt = tokenizer.encode("To be", false).unwrap().get_ids().to_vec();
    let options = GenerateOptions {
        max_tokens: 10,
        logprobs: Some(2),
        ..Default::default()
    };
    let free = generate(&model, &tokenizer, &prompt, &options, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let chars: Vec<char> = free.text.chars().collect();
    assert!(chars.len() >= 6, "{:?}", free.text);
    let stop: String = chars[3..5].iter().collect();
    for options in [
        options.clone(),
        GenerateOptions {
            stop: vec![stop],
            ..options
        },
    ] {
        let (mut text, mut read) = (String::new(), vec![]);
        let generation = generate(&model, &tokenizer, &prompt, &options, |piece| {
            text.push_str(piece.text);
            read.extend_from_slice(piece.logprobs);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(text, generation.text);
        assert_eq!(read, generation.logprobs);
        assert_eq!(read.len(), generation.tokens.len());
        if !options.stop.is_empty() {
            assert_eq!(generation.finish, FinishReason::Stop);
            // The stop sequence's tokens were read but their text is not shown.
            assert!(generation.tokens.len() > generation.text.chars().count());
        }
    }
}
