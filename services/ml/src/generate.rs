//! Text generation: KV cache, greedy / temperature / top-k / top-p sampling, stop tokens and
//! stop sequences, a token budget, and streaming of text as it is produced; the model's
//! log-probabilities of what it chose (and of a prompt's own tokens) on request.

use crate::MlError;
use crate::gpt::{Context, Gpt, KvCache};
use crate::sample::Scores;
use rand::{SeedableRng, rngs::StdRng};
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 is greedy decoding.
    pub temperature: f64,
    pub top_k: Option<usize>,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: Option<f64>,
    /// Text that ends generation; it is not part of the output.
    pub stop: Vec<String>,
    /// Token ids that end generation (end-of-text, the next role marker).
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
    /// Reuse keys and values of earlier positions (off only to check the cache).
    pub use_cache: bool,
    /// Record each chosen token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            stop: vec![],
            stop_tokens: vec![],
            seed: 0,
            use_cache: true,
            logprobs: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop sequence.
    Stop,
    /// The token budget or the model's context ran out.
    Length,
    /// The caller stopped the stream.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish: FinishReason,
    /// With `GenerateOptions::logprobs`: one for each of `tokens`.
    pub logprobs: Vec<TokenLogprob>,
}

/// Text as it is settled, with the tokens decided since the last piece: their
/// log-probabilities when asked (a token whose text is held back goes with a later piece).
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub logprobs: &'a [TokenLogprob],
}

/// A token's log-probability under the model (its raw distribution: before temperature or
/// truncation), and the most likely tokens at its position, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f64,
    pub top: Vec<(u32, f64)>,
}

/// `token`'s log-probability and the `top` most likely at one position (logits `[vocab]`).
fn token_logprob(logits: &Tensor, token: u32, top: usize) -> Result<TokenLogprob, MlError> {
    let logprobs = logits.log_softmax(-1, Kind::Float);
    read_logprob(&logprobs, token, top)
}

/// [`token_logprob`] of log-probabilities already normalised (`[vocab]`).
fn read_logprob(logprobs: &Tensor, token: u32, top: usize) -> Result<TokenLogprob, MlError> {
    let logprob = logprobs.double_value(&[token as i64]);
    let top = match top {
        0 => vec![],
        k => {
            let (values, indices) = logprobs.topk(k as i64, -1, true, true);
            let values =
                Vec::<f64>::try_from(&values.to_kind(Kind::Double).to_device(Device::Cpu))?;
            let indices = Vec::<i64>::try_from(&indices.to_device(Device::Cpu))?;
            indices.into_iter().map(|i| i as u32).zip(values).collect()
        }
    };
    Ok(TokenLogprob {
        token,
        logprob,
        top,
    })
}

/// The log-probability of each of `ids` given those before it (none for the first), with the
/// `top` most likely at each position: one forward pass.
pub fn prompt_logprobs(
    model: &Gpt,
    ids: &[u32],
    top: usize,
) -> Result<Vec<Option<TokenLogprob>>, MlError> {
    let block = model.config.block_size as usize;
    if ids.is_empty() || ids.len() > block {
        return Err(MlError::Config(format!(
            "the prompt has {} tokens; it must have 1 to {block}",
            ids.len()
        )));
    }
    tch::no_grad(|| {
        let input: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let idx = Tensor::from_slice(&input)
            .view([1, -1])
            .to_device(model.device());
        let logits = model
            .forward(&idx, &Context::default(), None, false)?
            .squeeze_dim(0);
        let logprobs = logits.log_softmax(-1, Kind::Float);
        let mut out = vec![None];
        for (position, &token) in ids.iter().enumerate().skip(1) {
            let at = logprobs.get(position as i64 - 1);
            out.push(Some(read_logprob(&at, token, top)?));
        }
        Ok(out)
    })
}

/// Refuses a prompt or options no generation can take.
pub(crate) fn check(
    prompt: &[u32],
    options: &GenerateOptions,
    block: usize,
) -> Result<(), MlError> {
    if prompt.is_empty() {
        return Err(MlError::Config("the prompt is empty".into()));
    }
    if prompt.len() >= block {
        return Err(MlError::Config(format!(
            "the prompt has {} tokens; the model's context is {block}",
            prompt.len()
        )));
    }
    if let Some(p) = options.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(MlError::Config(format!("top_p {p} is outside (0, 1]")));
    }
    if options.temperature < 0.0 {
        return Err(MlError::Config("temperature must not be negative".into()));
    }
    Ok(())
}

/// Generates a continuation of `prompt`, calling `on_text` with each new piece of text
/// (whole characters only, stop sequences never shown) as it is decided.
pub fn generate(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_text: impl FnMut(Piece) -> ControlFlow<()>,
) -> Result<Generation, MlError> {
    let block = model.config.block_size as usize;
    check(prompt, options, block)?;
    let device = model.device();
    let mut decoding = Decoding::new(prompt.len(), options.clone(), block);
    let mut cache = KvCache::default();
    tch::no_grad(|| -> Result<(), MlError> {
        while decoding.wants_more() {
            let tokens = decoding.tokens();
            let (input, cache_ref) = if options.use_cache && !cache.is_empty() {
                (vec![*tokens.last().unwrap()], Some(&mut cache))
            } else if options.use_cache {
                (prompt.to_vec(), Some(&mut cache))
            } else {
                ([prompt, tokens].concat(), None)
            };
            let ids: Vec<i64> = input.iter().map(|&t| t as i64).collect();
            let idx = Tensor::from_slice(&ids).view([1, -1]).to_device(device);
            let logits = model.forward(&idx, &Context::default(), cache_ref, false)?;
            let scores = Scores::new(&logits.select(1, -1), &[options.temperature])?;
            if decoding
                .step((&scores, 0), tokenizer, &mut on_text)?
                .is_break()
            {
                break;
            }
        }
        Ok(())
    })?;
    Ok(decoding.finish(&mut on_text))
}

/// One generation's progress, whatever runs the model: the tokens chosen, the text decided
/// and shown, and why it ended. `generate` feeds it one sequence's logits; a continuous
/// batch feeds each of its rows.
pub(crate) struct Decoding {
    options: GenerateOptions,
    rng: StdRng,
    prompt_tokens: usize,
    block: usize,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    text: String,
    /// Bytes of `text` already passed to `on_text`.
    shown: usize,
    /// Entries of `logprobs` already passed to `on_text`.
    reported: usize,
    finish: FinishReason,
}

impl Decoding {
    pub(crate) fn new(prompt_tokens: usize, options: GenerateOptions, block: usize) -> Decoding {
        Decoding {
            rng: StdRng::seed_from_u64(options.seed),
            options,
            prompt_tokens,
            block,
            tokens: vec![],
            logprobs: vec![],
            text: String::new(),
            shown: 0,
            reported: 0,
            finish: FinishReason::Length,
        }
    }

    pub(crate) fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Whether the token budget and the model's context leave room for another token.
    pub(crate) fn wants_more(&self) -> bool {
        self.tokens.len() < self.options.max_tokens
            && self.prompt_tokens + self.tokens.len() < self.block
    }

    /// Picks the next token from row `row` of a step's scores and shows what text it
    /// settles; `Break` when the generation is over (a stop, the caller, or no room left).
    pub(crate) fn step(
        &mut self,
        (scores, row): (&Scores, usize),
        tokenizer: &Tokenizer,
        on_text: &mut impl FnMut(Piece) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, MlError> {
        let next = scores.pick(row, &self.options, &mut self.rng);
        if self.options.stop_tokens.contains(&next) {
            self.finish = FinishReason::Stop;
            return Ok(ControlFlow::Break(()));
        }
        if let Some(top) = self.options.logprobs {
            self.logprobs
                .push(token_logprob(&scores.logits(row), next, top)?);
        }
        self.tokens.push(next);
        self.text = tokenizer
            .decode(&self.tokens, true)
            .map_err(|e| MlError::Tokenizer(e.to_string()))?;
        if let Some(at) = self
            .options
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(at);
            self.finish = FinishReason::Stop;
        }
        // Hold back an incomplete character and any tail that may begin a stop sequence.
        let settled = if self.finish == FinishReason::Stop {
            self.text.len()
        } else {
            settled_len(&self.text, &self.options.stop)
        };
        if settled > self.shown {
            let flow = self.show(settled, on_text);
            if flow.is_break() {
                self.finish = FinishReason::Cancelled;
                return Ok(ControlFlow::Break(()));
            }
        }
        if self.finish == FinishReason::Stop || !self.wants_more() {
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Passes the text up to byte `settled` not shown yet, with the readings not reported.
    fn show(
        &mut self,
        settled: usize,
        on_text: &mut impl FnMut(Piece) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let piece = Piece {
            text: &self.text[self.shown..settled],
            logprobs: &self.logprobs[self.reported..],
        };
        let flow = on_text(piece);
        self.shown = settled;
        self.reported = self.logprobs.len();
        flow
    }

    /// The generation; what was held back (text that might have begun a stop sequence, the
    /// readings of tokens whose text a stop sequence removed) goes out now, unless the
    /// caller stopped listening.
    pub(crate) fn finish(
        mut self,
        on_text: &mut impl FnMut(Piece) -> ControlFlow<()>,
    ) -> Generation {
        let held = self.text.len() > self.shown || self.logprobs.len() > self.reported;
        if self.finish != FinishReason::Cancelled && held {
            let _ = self.show(self.text.len(), on_text);
        }
        Generation {
            text: self.text,
            tokens: self.tokens,
            prompt_tokens: self.prompt_tokens,
            finish: self.finish,
            logprobs: self.logprobs,
        }
    }
}

/// The length of `text` that can be shown: no trailing replacement character (a byte-level
/// token split inside a character) and no tail that is a prefix of a stop sequence.
fn settled_len(text: &str, stop: &[String]) -> usize {
    let end = text.trim_end_matches('\u{FFFD}').len();
    let held = stop
        .iter()
        .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
        .filter(|prefix| text[..end].ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0);
    end - held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_characters_and_stop_prefixes() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(settled_len("hello", &stop), 5);
        assert_eq!(settled_len("hello\n", &stop), 5);
        assert_eq!(settled_len("hello EN", &stop), 6);
        assert_eq!(settled_len("caf\u{FFFD}", &stop), 3);
        assert_eq!(settled_len("hello E", &[]), 7);
    }
}
