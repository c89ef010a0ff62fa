//! Preference pairs: a prompt with a chosen and a rejected response, as the reward model and
//! DPO learn from them.
//!
//! A pair is two conversations in the chat template, `<|user|>prompt<|assistant|>response
//! <|endoftext|>`, the response and its end scored. A batch of `n` pairs is `2n` rows padded on
//! the right, the chosen responses first (TRL's layout); each row knows its last real token,
//! where a reward model reads its score, and, for DPO, the reference model's log-probability
//! of its response, computed once before training ([`Pairs::with_reference`]).

use crate::MlError;
use crate::chat::{self, Message, Role};
use crate::data::{Batch, Batches, Example, PairRows, draw, padded};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

/// One preference: for `prompt`, `chosen` is better than `rejected` (by `margin`, when the
/// record gives one: the reward model's Bradley–Terry margin).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    #[serde(default)]
    pub margin: Option<f64>,
}

impl Pair {
    /// `{"prompt", "chosen", "rejected"[, "margin"]}`; the error says what is wrong with it.
    pub fn parse(record: &str) -> Result<Pair, String> {
        let pair: Pair = serde_json::from_str(record).map_err(|e| {
            format!("expected {{\"prompt\", \"chosen\", \"rejected\"}} with strings: {e}")
        })?;
        for (name, text) in [("chosen", &pair.chosen), ("rejected", &pair.rejected)] {
            if text.trim().is_empty() {
                return Err(format!("the {name} response is empty"));
            }
        }
        if pair.chosen.trim() == pair.rejected.trim() {
            return Err("the chosen and rejected responses are the same: nothing to prefer".into());
        }
        if pair.margin.is_some_and(|m| !m.is_finite()) {
            return Err("the margin is not a finite number".into());
        }
        Ok(pair)
    }

    fn conversation(&self, response: &str) -> [Message; 2] {
        [
            Message::new(Role::User, self.prompt.as_str()),
            Message::new(Role::Assistant, response),
        ]
    }
}

/// Reads preference pairs from JSON lines; a bad line is an error naming it.
pub fn read_jsonl(path: &Path) -> Result<Vec<Pair>, MlError> {
    let text = std::fs::read_to_string(path).map_err(MlError::io(path))?;
    let pairs = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            Pair::parse(line)
                .map_err(|why| MlError::Data(format!("{}:{}: {why}", path.display(), i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if pairs.is_empty() {
        return Err(MlError::Empty(format!(
            "{} has no preference pairs",
            path.display()
        )));
    }
    Ok(pairs)
}

/// A pair as two rendered conversations.
#[derive(Clone)]
pub struct Encoded {
    pub chosen: Example,
    pub rejected: Example,
    pub margin: f32,
}

pub fn encode(tokenizer: &Tokenizer, pairs: &[Pair]) -> Result<Vec<Encoded>, MlError> {
    pairs
        .iter()
        .map(|p| {
            Ok(Encoded {
                chosen: chat::render(tokenizer, &p.conversation(&p.chosen))?,
                rejected: chat::render(tokenizer, &p.conversation(&p.rejected))?,
                margin: p.margin.unwrap_or(0.0) as f32,
            })
        })
        .collect()
}

/// Encoded pairs drawn `batch_size` at a time, each epoch in its own seeded order.
#[derive(Clone)]
pub struct Pairs {
    pairs: Vec<Encoded>,
    /// The reference model's log-probabilities of each pair's (chosen, rejected) response.
    reference: Option<Vec<[f32; 2]>>,
    batch_size: usize,
    block_size: usize,
    pad: u32,
    seed: u64,
}

impl Pairs {
    pub fn new(
        pairs: Vec<Encoded>,
        batch_size: usize,
        block_size: usize,
        pad: u32,
        seed: u64,
    ) -> Result<Pairs, MlError> {
        if pairs.is_empty() {
            return Err(MlError::Empty("no preference pairs to learn from".into()));
        }
        if batch_size == 0 || block_size < 2 {
            return Err(MlError::Config(format!(
                "pairs need a positive batch size and a block of two tokens or more (got {batch_size}, {block_size})"
            )));
        }
        Ok(Pairs {
            pairs,
            reference: None,
            batch_size,
            block_size,
            pad,
            seed,
        })
    }

    /// The chosen side of every pair, as a conversation.
    pub fn chosen(&self) -> Vec<Example> {
        self.pairs.iter().map(|p| p.chosen.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The reference log-probabilities of every pair, in order ([`crate::align::reference_logps`]).
    pub fn with_reference(mut self, logps: Vec<[f32; 2]>) -> Result<Pairs, MlError> {
        if logps.len() != self.pairs.len() {
            return Err(MlError::Data(format!(
                "{} reference log-probabilities for {} pairs",
                logps.len(),
                self.pairs.len()
            )));
        }
        self.reference = Some(logps);
        Ok(self)
    }

    /// Every pair once, in order, `batch_size` at a time (reference passes and evaluation).
    pub fn sequential(&self, device: Device) -> Vec<Batch> {
        let all: Vec<usize> = (0..self.pairs.len()).collect();
        all.chunks(self.batch_size)
            .map(|chunk| self.assemble(chunk, device))
            .collect()
    }

    fn assemble(&self, indices: &[usize], device: Device) -> Batch {
        let rows: Vec<&Example> = [false, true]
            .iter()
            .flat_map(|&rejected| {
                indices.iter().map(move |&i| {
                    let p = &self.pairs[i];
                    if rejected { &p.rejected } else { &p.chosen }
                })
            })
            .collect();
        let (input, target, last) = padded(&rows, self.block_size, self.pad, device);
        let floats = |values: Vec<f32>| Tensor::from_slice(&values).to_device(device);
        let reference = self.reference.as_ref().map(|r| {
            let side = |k: usize| indices.iter().map(move |&i| r[i][k]);
            floats(side(0).chain(side(1)).collect())
        });
        let margin: Vec<f32> = indices.iter().map(|&i| self.pairs[i].margin).collect();
        Batch {
            input,
            target,
            positions: None,
            mask: None,
            text_from: None,
            pairs: Some(PairRows {
                last,
                reference,
                margin: floats(margin).to_kind(Kind::Float),
            }),
            samples: None,
        }
    }
}

impl Batches for Pairs {
    fn batch(&self, index: u64, device: Device) -> Result<Batch, MlError> {
        let drawn = draw(self.seed, index, self.batch_size, self.pairs.len());
        Ok(self.assemble(&drawn, device))
    }

    /// The mean tokens of a batch's rows (lengths vary; padding is not counted).
    fn tokens_per_batch(&self) -> usize {
        let tokens: usize = self
            .pairs
            .iter()
            .map(|p| {
                let len = |e: &Example| e.ids.len().min(self.block_size);
                len(&p.chosen) + len(&p.rejected)
            })
            .sum();
        tokens * self.batch_size / self.pairs.len()
    }
}
