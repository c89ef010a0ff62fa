//! Training batches. Each batch is a pure function of the run's seed and the batch's index
//! (step × accumulation + micro-step), so a run resumed at step `s` reads exactly the batches
//! an uninterrupted run would have.

use crate::MlError;
use crate::gpt::{Context, Gpt, IGNORE};
use crate::shards::Shard;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tch::{Device, Kind, Tensor};

/// Inputs and next-token targets `[batch, time]`, with the positions and attention mask of
/// packed rows where there are several examples per row.
pub struct Batch {
    pub input: Tensor,
    pub target: Tensor,
    pub positions: Option<Tensor>,
    pub mask: Option<Tensor>,
    /// The first row of rehearsal text (pre-training windows after the examples), where a
    /// fine-tuning run pulls the model toward its base.
    pub text_from: Option<i64>,
    /// Preference pairs: the rows are the chosen responses, then the rejected.
    pub pairs: Option<PairRows>,
    /// Completions sampled from the policy, with their advantages (RLOO).
    pub samples: Option<crate::rloo::SampleRows>,
}

/// What a batch of preference pairs carries besides its rows ([`crate::preference`]).
pub struct PairRows {
    /// `[2n]` each row's last real token, where a reward model reads its score.
    pub last: Tensor,
    /// `[2n]` the reference model's log-probability of each row's response (DPO).
    pub reference: Option<Tensor>,
    /// `[n]` the Bradley–Terry margin of each pair (0 when the data gives none).
    pub margin: Tensor,
}

impl Batch {
    pub fn context(&self) -> Context<'_> {
        Context {
            positions: self.positions.as_ref(),
            mask: self.mask.as_ref(),
            base_only: false,
        }
    }

    /// Targets that are scored (not [`IGNORE`]).
    pub fn scored_tokens(&self) -> i64 {
        self.target.ne(IGNORE).sum(Kind::Int64).int64_value(&[])
    }
}

pub trait Batches {
    /// The `index`-th micro-batch of the run.
    fn batch(&self, index: u64, device: Device) -> Result<Batch, MlError>;
    /// The `index`-th micro-batch for `policy`, the model being trained: on-policy data is
    /// sampled from it; other data is [`Batches::batch`].
    fn batch_from(&self, index: u64, device: Device, _policy: &Gpt) -> Result<Batch, MlError> {
        self.batch(index, device)
    }
    /// Tokens fed to the model per batch (for tokens/s).
    fn tokens_per_batch(&self) -> usize;
}

/// The items of the `index`-th batch of `batch_size` drawn from `n`: epoch after epoch, each
/// in its own seeded order (the k-th item drawn in the run is of epoch k / n).
pub(crate) fn draw(seed: u64, index: u64, batch_size: usize, n: usize) -> Vec<usize> {
    let n = n as u64;
    let mut order: Option<(u64, Vec<usize>)> = None;
    (0..batch_size as u64)
        .map(|b| {
            let k = index * batch_size as u64 + b;
            let epoch = k / n;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut all: Vec<usize> = (0..n as usize).collect();
                all.shuffle(&mut rng_at(seed, epoch));
                order = Some((epoch, all));
            }
            order.as_ref().unwrap().1[(k % n) as usize]
        })
        .collect()
}

/// A generator for one position of the run's random stream.
fn rng_at(seed: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index)
}

fn to_tensor(rows: Vec<i64>, batch: usize, device: Device) -> Tensor {
    onto(Tensor::from_slice(&rows).view([batch as i64, -1]), device)
}

/// A host batch on `device`. On CUDA it travels from page-locked memory without blocking (as
/// PyTorch's `pin_memory` with `non_blocking`), so the host goes on queueing the step's
/// kernels instead of waiting for the previous step to drain; a host out of page-locked
/// memory copies it the ordinary way.
fn onto(host: Tensor, device: Device) -> Tensor {
    if !device.is_cuda() {
        return host;
    }
    let host = host.f_pin_memory(device).unwrap_or(host);
    host.to_device_(device, host.kind(), true, false)
}

/// Pre-training: `batch_size` windows of `block_size + 1` tokens at random offsets of a shard.
pub struct Windows {
    shard: Shard,
    batch_size: usize,
    block_size: usize,
    seed: u64,
}

impl Windows {
    pub fn new(
        shard: Shard,
        batch_size: usize,
        block_size: usize,
        seed: u64,
    ) -> Result<Windows, MlError> {
        if shard.len() <= block_size + 1 {
            return Err(MlError::Empty(format!(
                "{} tokens cannot fill one window of {} + 1",
                shard.len(),
                block_size
            )));
        }
        Ok(Windows {
            shard,
            batch_size,
            block_size,
            seed,
        })
    }
}

impl Batches for Windows {
    fn batch(&self, index: u64, device: Device) -> Result<Batch, MlError> {
        let mut rng = rng_at(self.seed, index);
        let (t, last) = (self.block_size, self.shard.len() - self.block_size - 1);
        let mut input = Vec::with_capacity(self.batch_size * t);
        let mut target = Vec::with_capacity(self.batch_size * t);
        for _ in 0..self.batch_size {
            let window = self.shard.window(rng.random_range(0..=last), t + 1)?;
            input.extend(window[..t].iter().map(|&id| id as i64));
            target.extend(window[1..].iter().map(|&id| id as i64));
        }
        Ok(Batch {
            input: to_tensor(input, self.batch_size, device),
            target: to_tensor(target, self.batch_size, device),
            positions: None,
            mask: None,
            text_from: None,
            pairs: None,
            samples: None,
        })
    }

    fn tokens_per_batch(&self) -> usize {
        self.batch_size * self.block_size
    }
}

/// The whole of a validation shard as non-overlapping windows, `batch_size` at a time;
/// `limit` keeps only the first windows (for quick periodic checks).
pub fn validation_batches(
    shard: &Shard,
    block_size: usize,
    batch_size: usize,
    limit: Option<usize>,
    device: Device,
) -> Result<Vec<Batch>, MlError> {
    let windows = (shard.len().saturating_sub(1)) / block_size;
    let windows = limit.map_or(windows, |l| l.min(windows));
    if windows == 0 {
        return Err(MlError::Empty(format!(
            "the validation split ({} tokens) is shorter than one window of {block_size}",
            shard.len()
        )));
    }
    (0..windows)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(|chunk| {
            let (mut input, mut target) = (Vec::new(), Vec::new());
            for &w in chunk {
                let ids = shard.window(w * block_size, block_size + 1)?;
                input.extend(ids[..block_size].iter().map(|&id| id as i64));
                target.extend(ids[1..].iter().map(|&id| id as i64));
            }
            Ok(Batch {
                input: to_tensor(input, chunk.len(), device),
                target: to_tensor(target, chunk.len(), device),
                positions: None,
                mask: None,
                text_from: None,
                pairs: None,
                samples: None,
            })
        })
        .collect()
}

/// One row: the whole example as input and next-token targets on its scored ids; at most
/// `block` of its last tokens.
fn row(example: &Example, block: usize) -> (Vec<i64>, Vec<i64>) {
    let from = example.ids.len().saturating_sub(block);
    let ids = &example.ids[from..];
    let target = (0..ids.len())
        .map(|i| match example.scored.get(from + i + 1) {
            Some(true) => ids[i + 1] as i64,
            _ => IGNORE,
        })
        .collect();
    (ids.iter().map(|&id| id as i64).collect(), target)
}

/// `examples` as rows right-padded with `pad` to the longest: input and target
/// `[rows, width]`, and each row's last real position `[rows]` (where a reward model reads
/// its score).
pub(crate) fn padded(
    examples: &[&Example],
    block: usize,
    pad: u32,
    device: Device,
) -> (Tensor, Tensor, Tensor) {
    let rows: Vec<(Vec<i64>, Vec<i64>)> = examples.iter().map(|e| row(e, block)).collect();
    let width = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
    let (mut input, mut target, mut last) = (Vec::new(), Vec::new(), Vec::new());
    for (ids, targets) in &rows {
        last.push(ids.len() as i64 - 1);
        input.extend(ids.iter().copied());
        input.extend(std::iter::repeat_n(pad as i64, width - ids.len()));
        target.extend(targets.iter().copied());
        target.extend(std::iter::repeat_n(IGNORE, width - ids.len()));
    }
    let n = rows.len() as i64;
    (
        onto(Tensor::from_slice(&input).view([n, -1]), device),
        onto(Tensor::from_slice(&target).view([n, -1]), device),
        onto(Tensor::from_slice(&last), device),
    )
}

/// One tokenised example: ids and whether each id is a scored target.
#[derive(Clone)]
pub struct Example {
    pub ids: Vec<u32>,
    pub scored: Vec<bool>,
}

/// SFT: short examples packed into rows of `block_size`. Each example keeps its own
/// positions and sees only itself; rows are drawn in a fresh seeded order every epoch.
pub struct Packed {
    rows: Vec<Row>,
    batch_size: usize,
    block_size: usize,
    seed: u64,
    /// Examples cut to fit a row.
    pub truncated: usize,
}

struct Row {
    input: Vec<i64>,
    target: Vec<i64>,
    positions: Vec<i64>,
    segments: Vec<i64>,
}

impl Row {
    fn new() -> Row {
        Row {
            input: vec![],
            target: vec![],
            positions: vec![],
            segments: vec![],
        }
    }

    /// Fills the row to `block_size`: padding is its own segment and is never scored.
    fn pad(mut self, block_size: usize, pad_id: u32) -> Row {
        let pad = block_size - self.input.len();
        let segment = self.segments.last().map_or(0, |s| s + 1);
        self.input.extend(std::iter::repeat_n(pad_id as i64, pad));
        self.target.extend(std::iter::repeat_n(IGNORE, pad));
        self.positions.extend(0..pad as i64);
        self.segments.extend(std::iter::repeat_n(segment, pad));
        self
    }
}

impl Packed {
    pub fn new(
        examples: &[Example],
        batch_size: usize,
        block_size: usize,
        pad_id: u32,
        seed: u64,
    ) -> Result<Packed, MlError> {
        let mut rows = Vec::new();
        let mut row = Row::new();
        let mut truncated = 0;
        for example in examples {
            // An example of n ids gives n - 1 (input, target) pairs.
            let pairs = example.ids.len().saturating_sub(1);
            if pairs == 0 || !example.scored[1..].iter().any(|s| *s) {
                continue;
            }
            let len = if pairs > block_size {
                truncated += 1;
                block_size
            } else {
                pairs
            };
            if row.input.len() + len > block_size {
                rows.push(std::mem::replace(&mut row, Row::new()).pad(block_size, pad_id));
            }
            let segment = row.segments.last().map_or(0, |s| s + 1);
            for i in 0..len {
                row.input.push(example.ids[i] as i64);
                row.target.push(if example.scored[i + 1] {
                    example.ids[i + 1] as i64
                } else {
                    IGNORE
                });
                row.positions.push(i as i64);
                row.segments.push(segment);
            }
        }
        if !row.input.is_empty() {
            rows.push(row.pad(block_size, pad_id));
        }
        if rows.is_empty() {
            return Err(MlError::Empty(
                "no SFT example has an assistant turn to learn from".into(),
            ));
        }
        Ok(Packed {
            rows,
            batch_size,
            block_size,
            seed,
            truncated,
        })
    }

    /// Rows the examples fill.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// The same rows, drawn `batch_size` at a time.
    pub fn with_batch_size(self, batch_size: usize) -> Packed {
        Packed { batch_size, ..self }
    }
}

impl Batches for Packed {
    fn batch(&self, index: u64, device: Device) -> Result<Batch, MlError> {
        let drawn = draw(self.seed, index, self.batch_size, self.rows.len());
        let rows: Vec<&Row> = drawn.into_iter().map(|i| &self.rows[i]).collect();
        Ok(self.assemble(&rows, device))
    }

    fn tokens_per_batch(&self) -> usize {
        self.batch_size * self.block_size
    }
}

/// Fine-tuning with rehearsal: each batch is some rows of packed examples (drawn epoch by
/// epoch, as [`Packed`] draws them) and the rest fresh windows of pre-training text (drawn as
/// [`Windows`] draws them). The examples are learnt while the model keeps reading the text it
/// was trained on, a different sample at every step: a fixed set of windows repeated for as
/// many epochs as the examples would be memorised instead, and held-out perplexity would rise.
pub struct Mixture {
    examples: Packed,
    text: Windows,
}

impl Mixture {
    /// `examples` and `text` give their share of each batch (their own `batch_size`s).
    pub fn new(examples: Packed, text: Windows) -> Result<Mixture, MlError> {
        if examples.block_size != text.block_size {
            return Err(MlError::Config(format!(
                "examples are packed in rows of {} tokens, text windows have {}",
                examples.block_size, text.block_size
            )));
        }
        Ok(Mixture { examples, text })
    }
}

impl Batches for Mixture {
    fn batch(&self, index: u64, device: Device) -> Result<Batch, MlError> {
        let examples = self.examples.batch(index, device)?;
        let text = self.text.batch(index, device)?;
        // A window is one sequence from position 0: the positions and causal mask packed rows
        // carry explicitly.
        let (rows, t) = (text.input.size()[0], self.text.block_size as i64);
        let positions = Tensor::arange(t, (Kind::Int64, device)).expand([rows, t], false);
        let causal = Tensor::ones([t, t], (Kind::Bool, device))
            .tril(0)
            .expand([rows, 1, t, t], false);
        let both = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 0);
        let packed = |part: Option<Tensor>| part.expect("packed rows carry positions and masks");
        Ok(Batch {
            input: both(&examples.input, &text.input),
            target: both(&examples.target, &text.target),
            positions: Some(both(&packed(examples.positions), &positions)),
            mask: Some(both(&packed(examples.mask), &causal)),
            text_from: Some(examples.input.size()[0]),
            pairs: None,
            samples: None,
        })
    }

    fn tokens_per_batch(&self) -> usize {
        self.examples.tokens_per_batch() + self.text.tokens_per_batch()
    }
}

impl Packed {
    /// Every row once, in order (validation).
    pub fn sequential(&self, device: Device) -> Vec<Batch> {
        let rows: Vec<&Row> = self.rows.iter().collect();
        rows.chunks(self.batch_size)
            .map(|chunk| self.assemble(chunk, device))
            .collect()
    }

    fn assemble(&self, rows: &[&Row], device: Device) -> Batch {
        let (mut input, mut target, mut positions, mut segments) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            input.extend_from_slice(&row.input);
            target.extend_from_slice(&row.target);
            positions.extend_from_slice(&row.positions);
            segments.extend_from_slice(&row.segments);
        }
        let b = rows.len();
        let segments = to_tensor(segments, b, device);
        let t = self.block_size as i64;
        let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0);
        let same = segments.unsqueeze(2).eq_tensor(&segments.unsqueeze(1));
        Batch {
            input: to_tensor(input, b, device),
            target: to_tensor(target, b, device),
            positions: Some(to_tensor(positions, b, device)),
            mask: Some(same.logical_and(&causal).unsqueeze(1)),
            text_from: None,
            pairs: None,
            samples: None,
        }
    }
}
