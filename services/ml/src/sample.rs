//! Choosing each row's next token from a step's logits. The distributions at each row's own
//! temperature are computed for every row at once by libtorch (one vectorised softmax, one
//! copy to the host); each generation then draws on the host with its own generator, so a
//! seed gives the same tokens alone and in any batch.

use crate::MlError;
use crate::generate::GenerateOptions;
use rand::{Rng, rngs::StdRng};
use tch::{Device, Kind, Tensor};

/// A step's logits `[rows, vocab]`, read for drawing.
pub(crate) struct Scores {
    logits: Tensor,
    /// Each row's distribution at its temperature, rows one after another (empty when every
    /// row decodes greedily).
    probs: Vec<f32>,
    /// Each row's most likely token (the first of equals).
    greedy: Vec<i64>,
    vocab: usize,
}

impl Scores {
    /// `temperatures[row]` is row `row`'s (0: greedy).
    pub(crate) fn new(logits: &Tensor, temperatures: &[f64]) -> Result<Scores, MlError> {
        let logits = logits.to_kind(Kind::Float);
        let vocab = logits.size()[1] as usize;
        let greedy = Vec::<i64>::try_from(&logits.argmax(-1, false).to_device(Device::Cpu))?;
        let probs = match temperatures.iter().any(|&t| t > 0.0) {
            true => {
                // A greedy row is scaled by 1: its distribution is not read.
                let scale: Vec<f32> = temperatures
                    .iter()
                    .map(|&t| if t > 0.0 { t as f32 } else { 1.0 })
                    .collect();
                let scale = Tensor::from_slice(&scale)
                    .view([-1, 1])
                    .to_device(logits.device());
                let probs = (&logits / scale).softmax(-1, Kind::Float);
                Vec::<f32>::try_from(&probs.to_device(Device::Cpu).contiguous().view([-1]))?
            }
            false => vec![],
        };
        Ok(Scores {
            logits,
            probs,
            greedy,
            vocab,
        })
    }

    /// Row `row`'s logits `[vocab]`.
    pub(crate) fn logits(&self, row: usize) -> Tensor {
        self.logits.get(row as i64)
    }

    /// Row `row`'s next token, drawn with `rng` as `options` ask.
    pub(crate) fn pick(&self, row: usize, options: &GenerateOptions, rng: &mut StdRng) -> u32 {
        if options.temperature == 0.0 {
            return self.greedy[row] as u32;
        }
        draw(
            &self.probs[row * self.vocab..(row + 1) * self.vocab],
            options,
            rng,
        )
    }
}

/// A token drawn from `probs` after `top_k` and `top_p` truncation.
fn draw(probs: &[f32], options: &GenerateOptions, rng: &mut StdRng) -> u32 {
    let top_k = options.top_k.filter(|&k| k > 0 && k < probs.len());
    if top_k.is_none() && options.top_p.is_none() {
        // The whole vocabulary in index order: no sort, no copy.
        return walk(probs.iter().map(|&p| p as f64).enumerate(), rng);
    }
    let descending = |&a: &usize, &b: &usize| probs[b].total_cmp(&probs[a]).then(a.cmp(&b));
    let mut order: Vec<usize> = (0..probs.len()).collect();
    match top_k {
        // Only the k kept are sorted.
        Some(k) => {
            order.select_nth_unstable_by(k - 1, descending);
            order.truncate(k);
            order.sort_unstable_by(descending);
        }
        None => order.sort_unstable_by(descending),
    }
    if let Some(p) = options.top_p {
        // Keep the most likely tokens until their share of the kept ones reaches p.
        let total: f64 = order.iter().map(|&i| probs[i] as f64).sum();
        let mut cumulative = 0.0;
        let keep = order
            .iter()
            .position(|&i| {
                cumulative += probs[i] as f64 / total;
                cumulative >= p
            })
            .map_or(order.len(), |i| i + 1);
        order.truncate(keep);
    }
    walk(order.iter().map(|&i| (i, probs[i] as f64)), rng)
}

/// Draws one of `weighted` (token, weight) in proportion to its weight.
fn walk(weighted: impl Iterator<Item = (usize, f64)> + Clone, rng: &mut StdRng) -> u32 {
    let total: f64 = weighted.clone().map(|(_, w)| w).sum();
    let mut target = rng.random::<f64>() * total;
    let mut last = 0;
    for (token, weight) in weighted {
        target -= weight;
        if target < 0.0 {
            return token as u32;
        }
        last = token;
    }
    // Rounding left a sliver past the last weight: the last token.
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn options(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> GenerateOptions {
        GenerateOptions {
            temperature,
            top_k,
            top_p,
            ..GenerateOptions::default()
        }
    }

    #[test]
    fn draws_follow_each_rows_temperature_and_truncation() {
        // Row 0 strongly prefers token 2; row 1 is flat over four tokens.
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 4.0, 0.5, 1.0, 1.0, 1.0, 1.0]).view([2, 4]);
        let scores = Scores::new(&logits, &[0.0, 1.0]).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(scores.pick(0, &options(0.0, None, None), &mut rng), 2);
        let count = |row: usize, o: &GenerateOptions, token: u32| {
            let mut rng = StdRng::seed_from_u64(5);
            (0..4000)
                .filter(|_| scores.pick(row, o, &mut rng) == token)
                .count() as f64
                / 4000.0
        };
        // Flat: each of four about a quarter; top_k 1 and top_p 0.2 keep the first of equals.
        assert!((count(1, &options(1.0, None, None), 3) - 0.25).abs() < 0.03);
        assert_eq!(count(1, &options(1.0, Some(1), None), 0), 1.0);
        assert_eq!(count(1, &options(1.0, None, Some(0.2)), 0), 1.0);
        // top_k 2 of row 1 keeps tokens 0 and 1, half each.
        assert!((count(1, &options(1.0, Some(2), None), 1) - 0.5).abs() < 0.03);
        assert_eq!(count(1, &options(1.0, Some(2), None), 2), 0.0);
    }

    #[test]
    fn a_row_draws_the_same_alone_and_in_a_batch() {
        let logits = Tensor::randn([5, 300], (Kind::Float, Device::Cpu));
        let temperatures = [0.7, 0.0, 1.3, 1.0, 0.9];
        let batch = Scores::new(&logits, &temperatures).unwrap();
        for (row, &t) in temperatures.iter().enumerate() {
            let alone = Scores::new(&logits.narrow(0, row as i64, 1), &[t]).unwrap();
            let o = options(t, (row == 3).then_some(20), (row == 4).then_some(0.8));
            let (mut a, mut b) = (StdRng::seed_from_u64(9), StdRng::seed_from_u64(9));
            for _ in 0..50 {
                assert_eq!(
                    batch.pick(row, &o, &mut a),
                    alone.pick(0, &o, &mut b),
                    "row {row}"
                );
            }
        }
    }
}
