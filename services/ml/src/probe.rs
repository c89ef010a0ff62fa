//! What a model is measured on while it learns from feedback, and the choice of the
//! checkpoint to hand on: the held-out metrics an evaluation gate checks (perplexity, the loss
//! of replies made of held-out lines) and how well the model has learnt the conversations it
//! is taught (their loss, and the share it reproduces exactly at greedy decoding).
//!
//! "Reproduces exactly" is measured under teacher forcing: a conversation is reproduced when
//! every scored token, the end of the reply included, is the model's most likely next token.
//! That is what greedy decoding of the same prompt would generate, without generating.

use crate::MlError;
use crate::chat::{self, Message, Role};
use crate::data::{Batch, Example, Packed, validation_batches};
use crate::gpt::{Context, Gpt, IGNORE};
use crate::shards::{self, Shard};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

/// Held-out windows are scored this many at a time.
const BATCH: usize = 16;

/// Conversations made of held-out text: one line asks, the next replies. A model that still
/// replies in the language of its corpus scores them as well as before; one taught to reply
/// with junk does not, even where its perplexity on plain text holds.
pub fn held_out_replies(held_out: &[String], count: usize) -> Vec<Vec<Message>> {
    let lines: Vec<&str> = held_out
        .iter()
        .flat_map(|d| d.lines())
        .map(str::trim)
        .filter(|l| l.split_whitespace().count() >= 4)
        .collect();
    let pairs = lines.len().saturating_sub(1);
    if pairs == 0 || count == 0 {
        return vec![];
    }
    (0..pairs)
        .step_by((pairs / count).max(1))
        .take(count)
        .map(|i| {
            vec![
                Message::new(Role::User, lines[i]),
                Message::new(Role::Assistant, lines[i + 1]),
            ]
        })
        .collect()
}

/// Conversations as packed batches scoring their replies.
pub fn reply_batches(
    tokenizer: &Tokenizer,
    conversations: &[Vec<Message>],
    block: usize,
    device: Device,
) -> Result<Vec<Batch>, MlError> {
    let examples = conversations
        .iter()
        .map(|c| chat::render(tokenizer, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Packed::new(&examples, BATCH, block, 0, 0)?.sequential(device))
}

/// The first `windows` (0: all) block-sized windows of `held_out`, tokenised into `work`.
pub fn held_out_batches(
    tokenizer: &Tokenizer,
    held_out: &[String],
    block: usize,
    windows: usize,
    work: &Path,
    device: Device,
) -> Result<Vec<Batch>, MlError> {
    let path = work.join("held_out.tok");
    shards::write(tokenizer, held_out, &path)?;
    let shard = Shard::open(&path)?;
    validation_batches(
        &shard,
        block,
        BATCH,
        (windows > 0).then_some(windows),
        device,
    )
}

/// `example` as one row of at most `block` positions: its ids as input, and as targets the
/// next ids where they are scored ([`IGNORE`] elsewhere); both `[1, n]`.
pub fn one_row(example: &Example, block: usize, device: Device) -> (Tensor, Tensor) {
    let n = (example.ids.len() - 1).min(block);
    let input: Vec<i64> = example.ids[..n].iter().map(|&i| i as i64).collect();
    let target: Vec<i64> = (0..n)
        .map(|i| match example.scored[i + 1] {
            true => example.ids[i + 1] as i64,
            false => IGNORE,
        })
        .collect();
    (
        Tensor::from_slice(&input).view([1, -1]).to_device(device),
        Tensor::from_slice(&target).view([1, -1]).to_device(device),
    )
}

/// One taught conversation: its ids as input and scored targets, one row.
struct Taught {
    input: Tensor,
    target: Tensor,
}

/// What a reading measures, on the same data every time.
pub struct Probe {
    held_out: Vec<Batch>,
    replies: Vec<Batch>,
    taught: Vec<Taught>,
}

/// One measurement of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub perplexity: Option<f64>,
    pub reply_loss: Option<f64>,
    /// Mean loss per scored token of the taught conversations.
    pub taught_loss: f64,
    /// Share of the taught conversations reproduced exactly at greedy decoding.
    pub taught_exact: f64,
}

impl Probe {
    /// `taught` are rendered conversations (those with nothing scored are left out).
    pub fn new(
        held_out: Vec<Batch>,
        replies: Vec<Batch>,
        taught: &[Example],
        block: usize,
        device: Device,
    ) -> Result<Probe, MlError> {
        let taught: Vec<Taught> = taught
            .iter()
            .filter(|e| e.ids.len() > 1 && e.scored[1..].iter().any(|s| *s))
            .map(|e| {
                let (input, target) = one_row(e, block, device);
                Taught { input, target }
            })
            .collect();
        if taught.is_empty() {
            return Err(MlError::Empty("no taught conversation has a reply".into()));
        }
        Ok(Probe {
            held_out,
            replies,
            taught,
        })
    }

    /// Measures `model`; with `base_only`, the base under its adapters.
    pub fn read(&self, model: &Gpt, base_only: bool) -> Result<Reading, MlError> {
        let loss = |batches: &[Batch]| -> Result<Option<f64>, MlError> {
            match batches.is_empty() {
                true => Ok(None),
                false => crate::train::evaluate_with(model, batches, base_only).map(Some),
            }
        };
        let context = Context {
            base_only,
            ..Context::default()
        };
        let perplexity = loss(&self.held_out)?.map(f64::exp);
        let reply_loss = loss(&self.replies)?;
        let (mut total, mut count, mut exact) = (0.0, 0i64, 0usize);
        tch::no_grad(|| -> Result<(), MlError> {
            for t in &self.taught {
                let logits = model.forward(&t.input, &context, None, false)?;
                let logits = logits.squeeze_dim(0);
                let target = t.target.squeeze_dim(0);
                let scored = target.ne(IGNORE);
                let n = scored.sum(Kind::Int64).int64_value(&[]);
                let ce = logits.cross_entropy_loss::<Tensor>(
                    &target,
                    None,
                    tch::Reduction::Sum,
                    IGNORE,
                    0.0,
                );
                total += ce.double_value(&[]);
                count += n;
                let hits = logits
                    .argmax(-1, false)
                    .eq_tensor(&target)
                    .logical_and(&scored)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                exact += usize::from(hits == n);
            }
            Ok(())
        })?;
        Ok(Reading {
            perplexity,
            reply_loss,
            taught_loss: total / count.max(1) as f64,
            taught_exact: exact as f64 / self.taught.len() as f64,
        })
    }
}

/// The gate's limits on held-out metrics, relative to the base model's, and the share of
/// each limit the chosen checkpoint must keep free (measurements on another device or in
/// another precision differ a little).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_perplexity_increase: f64,
    pub max_reply_loss_increase: f64,
    pub margin: f64,
}

impl Limits {
    /// Whether `reading` stays inside the limits, with the margin, over `base`.
    pub fn fits(&self, base: &Reading, reading: &Reading) -> bool {
        let room = 1.0 - self.margin;
        let within = |b: Option<f64>, c: Option<f64>, limit: f64| match (b, c) {
            (Some(b), Some(c)) => c <= b * (1.0 + limit * room),
            _ => true,
        };
        within(
            base.perplexity,
            reading.perplexity,
            self.max_perplexity_increase,
        ) && within(
            base.reply_loss,
            reading.reply_loss,
            self.max_reply_loss_increase,
        )
    }
}

/// A checkpoint on the run's path, as measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub step: u64,
    pub reading: Reading,
    pub fits: bool,
}

/// What [`Selector::finish`] chose.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub base: Reading,
    /// The checkpoint handed on: the one that learnt most inside the limits, or, when none
    /// fits, the last.
    pub chosen: Point,
    /// Every checkpoint measured, in order.
    pub path: Vec<Point>,
}

/// Measures the model every `interval` steps of a fine-tuning run, keeps a copy of the
/// weights that learnt most while inside the limits, and stops the run once `stop_at` of the
/// taught conversations are reproduced inside the limits.
pub struct Selector {
    probe: Probe,
    limits: Limits,
    interval: u64,
    stop_at: f64,
    base: Reading,
    path: Vec<Point>,
    /// The best fitting point's index in `path` and its trainable weights.
    best: Option<(usize, Vec<Tensor>)>,
}

impl Selector {
    /// `base` is the reading of the model the run started from.
    pub fn new(
        probe: Probe,
        base: Reading,
        limits: Limits,
        interval: u64,
        stop_at: f64,
    ) -> Result<Selector, MlError> {
        Ok(Selector {
            probe,
            limits,
            interval: interval.max(1),
            stop_at,
            base,
            path: vec![],
            best: None,
        })
    }

    pub fn base(&self) -> &Reading {
        &self.base
    }

    /// The checkpoints measured so far, in order.
    pub fn path(&self) -> &[Point] {
        &self.path
    }

    /// After step `step` of `max_steps`: measures on the interval and at the end.
    pub fn observe(
        &mut self,
        step: u64,
        max_steps: u64,
        model: &Gpt,
    ) -> Result<ControlFlow<()>, MlError> {
        if !step.is_multiple_of(self.interval) && step != max_steps {
            return Ok(ControlFlow::Continue(()));
        }
        let reading = self.probe.read(model, false)?;
        let fits = self.limits.fits(&self.base, &reading);
        let better = |best: &Reading| {
            (reading.taught_exact, -reading.taught_loss) > (best.taught_exact, -best.taught_loss)
        };
        let learnt = fits && reading.taught_exact >= self.stop_at;
        let improves = fits
            && self
                .best
                .as_ref()
                .is_none_or(|(i, _)| better(&self.path[*i].reading));
        self.path.push(Point {
            step,
            reading,
            fits,
        });
        if improves {
            let weights = tch::no_grad(|| {
                trainable(model)
                    .into_iter()
                    .map(|t| t.copy())
                    .collect::<Vec<_>>()
            });
            self.best = Some((self.path.len() - 1, weights));
        }
        Ok(match learnt {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        })
    }

    /// Puts the chosen weights back into `model` and says what was chosen.
    pub fn finish(self, model: &Gpt) -> Result<Selection, MlError> {
        let last = self
            .path
            .last()
            .cloned()
            .ok_or_else(|| MlError::Empty("no checkpoint was measured".into()))?;
        let chosen = match self.best {
            Some((index, weights)) => {
                tch::no_grad(|| {
                    for (mut var, saved) in trainable(model).into_iter().zip(&weights) {
                        var.copy_(saved);
                    }
                });
                self.path[index].clone()
            }
            None => last,
        };
        Ok(Selection {
            base: self.base,
            chosen,
            path: self.path,
        })
    }
}

/// The trainable variables in name order.
fn trainable(model: &Gpt) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = model.trainable().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, t)| t).collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_replies_pair_each_long_line_with_the_next() {
        let text = vec![
            "ACT I\nWho's there? Nay, answer me.\nStand, and unfold yourself now.\nLong live the king!\nBernardo? He. You come most carefully upon your hour.".to_string(),
        ];
        let replies = held_out_replies(&text, 10);
        let pairs: Vec<(&str, &str)> = replies
            .iter()
            .map(|c| (c[0].content.as_str(), c[1].content.as_str()))
            .collect();
        // "ACT I" has too few words to ask or answer.
        assert_eq!(
            pairs,
            [
                (
                    "Who's there? Nay, answer me.",
                    "Stand, and unfold yourself now."
                ),
                ("Stand, and unfold yourself now.", "Long live the king!"),
                (
                    "Long live the king!",
                    "Bernardo? He. You come most carefully upon your hour."
                ),
            ]
        );
        assert!(
            replies
                .iter()
                .all(|c| c[0].role == Role::User && c[1].role == Role::Assistant)
        );
        // At most `count`, spread over the text.
        assert_eq!(held_out_replies(&text, 2).len(), 2);
        let long: Vec<String> = (0..40)
            .map(|i| format!("line number {i} of many"))
            .collect();
        let spread = held_out_replies(&[long.join("\n")], 4);
        let asks: Vec<&str> = spread.iter().map(|c| c[0].content.as_str()).collect();
        assert_eq!(
            asks,
            [
                "line number 0 of many",
                "line number 9 of many",
                "line number 18 of many",
                "line number 27 of many"
            ]
        );
        assert!(held_out_replies(&["one line only here".to_string()], 4).is_empty());
    }
}
