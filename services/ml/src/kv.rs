//! Keys and values kept between forward passes, and the attention that reads them: one
//! sequence's ([`KvCache`], a generation on its own) or a continuous batch's ([`SlotCache`],
//! a row per running generation, each at a length of its own, and [`Gpt::step`], the batch's
//! forward pass).

use crate::MlError;
use crate::gpt::{Context, Gpt};
use tch::{Device, Kind, Tensor};

/// Keys and values of the positions seen so far, one pair per layer: `[batch, head, time, head_dim]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Positions already cached.
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |(k, _)| k.size()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends layer `layer`'s new keys and values; returns all of them, cached ones first.
    fn extend(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.layers.get(layer) {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2), Tensor::cat(&[pv, &v], 2)),
            None => (k, v),
        };
        let entry = (k.shallow_clone(), v.shallow_clone());
        match self.layers.get_mut(layer) {
            Some(slot) => *slot = entry,
            None => self.layers.push(entry),
        }
        (k, v)
    }
}

/// The keys and values of a continuous batch: per layer one tensor
/// `[capacity, head, block, head_dim]` whose rows `0..rows()` are the running generations,
/// each filled up to its own length. A finished generation's row is taken by the last one,
/// so the running rows stay contiguous and a step reads them without copying.
///
/// A step's input is packed: one new token for each running row, then whole prompts of the
/// rows [`open`](SlotCache::open)ed for it (the last rows), so a prompt's prefill and the
/// others' decoding are one forward pass.
pub struct SlotCache {
    layers: Vec<(Tensor, Tensor)>,
    /// Positions each row has cached (0 for a row opened for this step).
    lengths: Vec<i64>,
    /// Prompt lengths of the rows opened for this step, in row order.
    opened: Vec<i64>,
    block: i64,
}

impl SlotCache {
    /// An empty cache for sequences of up to `block` positions.
    pub fn new(block: i64) -> SlotCache {
        SlotCache {
            layers: vec![],
            lengths: vec![],
            opened: vec![],
            block,
        }
    }

    /// Running rows, opened ones included.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Each row's cached positions.
    pub fn lengths(&self) -> &[i64] {
        &self.lengths
    }

    /// Rows that take one new token in this step: those before the opened ones.
    pub(crate) fn decoding(&self) -> usize {
        self.rows() - self.opened.len()
    }

    /// Adds a row for each prompt of `lengths` tokens, read by the next step; none when one
    /// does not fit.
    pub(crate) fn open(&mut self, lengths: &[i64]) -> Result<(), MlError> {
        if let Some(length) = lengths.iter().find(|&&l| l == 0 || l > self.block) {
            return Err(MlError::Config(format!(
                "a prompt of {length} positions does not fit a slot of {}",
                self.block
            )));
        }
        self.lengths.extend(lengths.iter().map(|_| 0));
        self.opened.extend_from_slice(lengths);
        Ok(())
    }

    /// Removes row `row`; the last row moves into its place (the caller moves its own
    /// per-row state the same way: `Vec::swap_remove`).
    pub fn swap_remove(&mut self, row: usize) -> Result<(), MlError> {
        let last = self.rows() - 1;
        if row != last {
            let length = self.lengths[last];
            for (k, v) in &mut self.layers {
                let (from, to) = (last as i64, row as i64);
                k.get(to)
                    .narrow(1, 0, length)
                    .f_copy_(&k.get(from).narrow(1, 0, length))?;
                v.get(to)
                    .narrow(1, 0, length)
                    .f_copy_(&v.get(from).narrow(1, 0, length))?;
            }
        }
        self.lengths.swap_remove(row);
        Ok(())
    }

    /// Counts what a step added: one position for each decoding row, its prompt for each
    /// opened one.
    pub(crate) fn advance(&mut self) {
        let decoding = self.decoding();
        for length in &mut self.lengths[..decoding] {
            *length += 1;
        }
        for (length, prompt) in self.lengths[decoding..].iter_mut().zip(&self.opened) {
            *length = *prompt;
        }
        self.opened.clear();
    }

    /// The step's positions `[1, tokens]`: each decoding row's next one, then each opened
    /// row's prompt from 0.
    pub(crate) fn positions(&self, device: Device) -> Tensor {
        let decoding = &self.lengths[..self.decoding()];
        let prompts = self.opened.iter().flat_map(|&l| 0..l);
        let positions: Vec<i64> = decoding.iter().copied().chain(prompts).collect();
        Tensor::from_slice(&positions)
            .view([1, -1])
            .to_device(device)
    }

    /// Where each row's last input is in the step's packed tokens.
    pub(crate) fn last_inputs(&self) -> Vec<i64> {
        let decoding = self.decoding() as i64;
        let ends = self.opened.iter().scan(decoding, |at, &l| {
            *at += l;
            Some(*at - 1)
        });
        (0..decoding).chain(ends).collect()
    }

    /// Layer `layer`'s tensors, with room for every row (a layer is made or grown to
    /// twice the rows when they do not fit, keeping the cached positions).
    fn layer(&mut self, layer: usize, like: &Tensor) -> Result<&(Tensor, Tensor), MlError> {
        let rows = self.rows() as i64;
        let capacity = self.layers.get(layer).map_or(0, |(k, _)| k.size()[0]);
        if rows > capacity {
            let (h, hd) = (like.size()[1], like.size()[3]);
            let kept = self.decoding() as i64;
            let capacity = (2 * rows).max(4);
            let fresh = |old: Option<&Tensor>| -> Result<Tensor, MlError> {
                let t =
                    Tensor::f_zeros([capacity, h, self.block, hd], (like.kind(), like.device()))?;
                if let Some(old) = old.filter(|_| kept > 0) {
                    t.narrow(0, 0, kept).f_copy_(&old.narrow(0, 0, kept))?;
                }
                Ok(t)
            };
            let old = self.layers.get(layer);
            let grown = (fresh(old.map(|(k, _)| k))?, fresh(old.map(|(_, v)| v))?);
            match self.layers.get_mut(layer) {
                Some(slot) => *slot = grown,
                None => self.layers.push(grown),
            }
        }
        Ok(&self.layers[layer])
    }

    /// Layer `layer`'s attention for a step's packed queries, keys and values
    /// `[1, head, tokens, head_dim]`: each decoding row's new position sees its own cached
    /// ones, each prompt sees itself causally; the new keys and values join the rows.
    fn attend(
        &mut self,
        layer: usize,
        (q, k, v): (Tensor, Tensor, Tensor),
    ) -> Result<Tensor, MlError> {
        let decoding = self.decoding() as i64;
        let span = self.lengths[..decoding as usize]
            .iter()
            .max()
            .map_or(0, |l| l + 1);
        let device = q.device();
        let at = Tensor::from_slice(&self.lengths[..decoding as usize]).to_device(device);
        let opened = self.opened.clone();
        let (ck, cv) = self.layer(layer, &k)?;
        let mut outputs = vec![];
        if decoding > 0 {
            // One position per row: `[rows, head, 1, head_dim]`.
            let row_wise = |z: &Tensor| z.narrow(2, 0, decoding).transpose(0, 2);
            let every = Tensor::arange(decoding, (Kind::Int64, device));
            let index = [Some(every), None, Some(at.shallow_clone())];
            let _ = ck
                .shallow_clone()
                .f_index_put_(&index, &row_wise(&k).squeeze_dim(2), false)?;
            let _ = cv
                .shallow_clone()
                .f_index_put_(&index, &row_wise(&v).squeeze_dim(2), false)?;
            let keys = ck.narrow(0, 0, decoding).narrow(2, 0, span);
            let values = cv.narrow(0, 0, decoding).narrow(2, 0, span);
            // Each row sees its own positions up to the new one; the rest of its slot is unused.
            let allowed = Tensor::arange(span, (Kind::Int64, device))
                .unsqueeze(0)
                .le_tensor(&at.unsqueeze(1))
                .view([decoding, 1, 1, span]);
            let y = Tensor::f_scaled_dot_product_attention(
                &row_wise(&q),
                &keys,
                &values,
                Some(&allowed),
                0.0,
                false,
                None,
                false,
            )?;
            outputs.push(y.transpose(0, 2));
        }
        let mut from = decoding;
        for (row, &length) in (decoding..).zip(&opened) {
            let part = |z: &Tensor| z.narrow(2, from, length);
            ck.get(row).narrow(1, 0, length).f_copy_(&part(&k).get(0))?;
            cv.get(row).narrow(1, 0, length).f_copy_(&part(&v).get(0))?;
            outputs.push(Tensor::f_scaled_dot_product_attention(
                &part(&q),
                &part(&k),
                &part(&v),
                None::<&Tensor>,
                0.0,
                true,
                None,
                false,
            )?);
            from += length;
        }
        Ok(Tensor::f_cat(&outputs, 2)?)
    }
}

/// How a forward pass attends: over its own positions, after a sequence's cached ones, or
/// as a continuous batch's packed step (see [`SlotCache`]).
pub(crate) enum Attention<'a> {
    Full,
    Cached(&'a mut KvCache),
    Slots(&'a mut SlotCache),
}

impl Attention<'_> {
    /// Positions before the new ones (a batch's rows have their own: see `SlotCache::positions`).
    pub(crate) fn past(&self) -> i64 {
        match self {
            Attention::Cached(cache) => cache.len(),
            Attention::Full | Attention::Slots(_) => 0,
        }
    }

    /// The sequence's length once `new` positions are added; none for a batch's packed step,
    /// whose rows `Gpt::step` checks one by one.
    pub(crate) fn length_after(&self, new: i64) -> Option<i64> {
        match self {
            Attention::Slots(_) => None,
            Attention::Full | Attention::Cached(_) => Some(self.past() + new),
        }
    }

    /// Layer `layer`'s attention output `[batch, head, time, head_dim]` for new queries,
    /// keys and values of the same shape; `mask` (`[batch, 1, time, time]`, true where
    /// allowed) replaces causal attention over the new positions.
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        (q, k, v): (Tensor, Tensor, Tensor),
        mask: Option<&Tensor>,
        dropout: f64,
    ) -> Result<Tensor, MlError> {
        let sdpa = |k: &Tensor, v: &Tensor, mask: Option<&Tensor>, causal: bool| {
            Tensor::f_scaled_dot_product_attention(&q, k, v, mask, dropout, causal, None, false)
        };
        Ok(match self {
            Attention::Full => sdpa(&k, &v, mask, mask.is_none())?,
            Attention::Cached(cache) => {
                // This layer's own past: `len` reads the first layer, extended already.
                let past = cache.layers.get(layer).map_or(0, |(k, _)| k.size()[2]);
                let t = q.size()[2];
                let (k, v) = cache.extend(layer, k, v);
                match (mask, past) {
                    (Some(mask), _) => sdpa(&k, &v, Some(mask), false)?,
                    (None, 0) => sdpa(&k, &v, None, true)?,
                    // New positions after cached ones: each sees the cache and the new ones up to itself.
                    (None, _) => {
                        let rows = Tensor::arange_start(past, past + t, (Kind::Int64, q.device()));
                        let cols = Tensor::arange(past + t, (Kind::Int64, q.device()));
                        let allowed = cols.unsqueeze(0).le_tensor(&rows.unsqueeze(1));
                        sdpa(&k, &v, Some(&allowed), false)?
                    }
                }
            }
            Attention::Slots(slots) => slots.attend(layer, (q, k, v))?,
        })
    }
}

impl Gpt {
    /// One step of a continuous batch: each running row of `cache` takes its next token
    /// (`tokens[row]`) at its own position, and each of `prompts` is read into a new row
    /// after them, in one forward pass. Logits `[rows, vocab]` (fp32) of each row's last
    /// position, the new rows last.
    pub fn step(
        &self,
        tokens: &[u32],
        prompts: &[&[u32]],
        cache: &mut SlotCache,
    ) -> Result<Tensor, MlError> {
        if tokens.len() != cache.rows() {
            return Err(MlError::Config(format!(
                "{} tokens for {} running rows",
                tokens.len(),
                cache.rows()
            )));
        }
        if cache.lengths().iter().any(|&l| l >= self.config.block_size) {
            return Err(MlError::Config(format!(
                "a row is full: the model's block size is {}",
                self.config.block_size
            )));
        }
        let lengths: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
        cache.open(&lengths)?;
        let ids: Vec<i64> = tokens
            .iter()
            .chain(prompts.iter().copied().flatten())
            .map(|&t| t as i64)
            .collect();
        let idx = Tensor::from_slice(&ids)
            .view([1, -1])
            .to_device(self.device());
        let positions = cache.positions(self.device());
        let last = Tensor::from_slice(&cache.last_inputs()).to_device(self.device());
        let context = Context {
            positions: Some(&positions),
            ..Context::default()
        };
        let x = self.hidden(&idx, &context, &mut Attention::Slots(cache), false)?;
        cache.advance();
        Ok(self
            .logits(&x.index_select(1, &last), &context)
            .squeeze_dim(0))
    }
}
