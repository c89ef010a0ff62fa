//! Keys and values kept between forward passes, and the attention that reads them: one
//! sequence's ([`KvCache`], a generation on its own) or a continuous batch's ([`SlotCache`],
//! a row per running generation, each at a length of its own).

use crate::MlError;
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
/// so the running rows stay contiguous and a decode step reads them without copying.
pub struct SlotCache {
    layers: Vec<(Tensor, Tensor)>,
    lengths: Vec<i64>,
    block: i64,
}

impl SlotCache {
    /// An empty cache for sequences of up to `block` positions.
    pub fn new(block: i64) -> SlotCache {
        SlotCache {
            layers: vec![],
            lengths: vec![],
            block,
        }
    }

    /// Running rows.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Each row's cached positions.
    pub fn lengths(&self) -> &[i64] {
        &self.lengths
    }

    fn capacity(&self) -> i64 {
        self.layers.first().map_or(0, |(k, _)| k.size()[0])
    }

    /// Adds a row holding `cache`'s positions (a prompt's prefill); returns its index.
    pub fn push(&mut self, cache: &KvCache) -> Result<usize, MlError> {
        let row = self.rows() as i64;
        let length = cache.len();
        if length == 0 || length > self.block {
            return Err(MlError::Config(format!(
                "a row of {length} positions does not fit a slot of {}",
                self.block
            )));
        }
        if row == self.capacity() {
            self.grow(cache, (2 * row).max(4))?;
        }
        for ((k, v), (ck, cv)) in self.layers.iter_mut().zip(&cache.layers) {
            k.get(row).narrow(1, 0, length).f_copy_(&ck.get(0))?;
            v.get(row).narrow(1, 0, length).f_copy_(&cv.get(0))?;
        }
        self.lengths.push(length);
        Ok(row as usize)
    }

    /// Reallocates every layer to `capacity` rows, keeping the running ones.
    fn grow(&mut self, like: &KvCache, capacity: i64) -> Result<(), MlError> {
        let rows = self.rows() as i64;
        let (k0, _) = &like.layers[0];
        let (h, hd) = (k0.size()[1], k0.size()[3]);
        let options = (k0.kind(), k0.device());
        let fresh = |old: Option<&Tensor>| -> Result<Tensor, MlError> {
            let t = Tensor::f_zeros([capacity, h, self.block, hd], options)?;
            if let Some(old) = old.filter(|_| rows > 0) {
                t.narrow(0, 0, rows).f_copy_(&old.narrow(0, 0, rows))?;
            }
            Ok(t)
        };
        self.layers = (0..like.layers.len())
            .map(|i| {
                let old = self.layers.get(i);
                Ok((fresh(old.map(|(k, _)| k))?, fresh(old.map(|(_, v)| v))?))
            })
            .collect::<Result<_, MlError>>()?;
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

    /// Counts the position each row's decode step just added.
    pub(crate) fn advance(&mut self) {
        for length in &mut self.lengths {
            *length += 1;
        }
    }

    /// The rows' next positions `[rows, 1]`: where a decode step's tokens go.
    pub(crate) fn positions(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.lengths)
            .view([-1, 1])
            .to_device(device)
    }

    /// Longest row after this step.
    fn span(&self) -> i64 {
        self.lengths.iter().max().map_or(0, |l| l + 1)
    }
}

/// How a forward pass attends: over its own positions, after a sequence's cached ones, or
/// one new position per row of a continuous batch.
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
            Attention::Slots(slots) => {
                let (rows, span, device) = (slots.rows() as i64, slots.span(), q.device());
                let at = Tensor::from_slice(&slots.lengths).to_device(device);
                let every = Tensor::arange(rows, (Kind::Int64, device));
                let (ck, cv) = &mut slots.layers[layer];
                let index = [Some(every), None, Some(at.shallow_clone())];
                let _ = ck.f_index_put_(&index, &k.squeeze_dim(2), false)?;
                let _ = cv.f_index_put_(&index, &v.squeeze_dim(2), false)?;
                let keys = ck.narrow(0, 0, rows).narrow(2, 0, span);
                let values = cv.narrow(0, 0, rows).narrow(2, 0, span);
                // Each row sees its own positions up to the new one; the rest of its slot is unused.
                let allowed = Tensor::arange(span, (Kind::Int64, device))
                    .unsqueeze(0)
                    .le_tensor(&at.unsqueeze(1))
                    .view([rows, 1, 1, span]);
                sdpa(&keys, &values, Some(&allowed), false)?
            }
        })
    }
}
