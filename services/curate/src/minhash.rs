//! MinHash signatures over word shingles and a banded LSH index to find near duplicates.
//!
//! Hash family: multiply-shift, `h_i(x) = (a_i·x + b_i) >> 32` with odd `a_i`, over the
//! xxh3 hash of each shingle; signatures are `permutations` 32-bit minima. A document is a
//! candidate duplicate of an earlier one when any band of `rows` values matches exactly, and a
//! duplicate when their estimated Jaccard similarity reaches the threshold.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinHashConfig {
    /// Words per shingle.
    pub shingle: usize,
    pub bands: usize,
    pub rows: usize,
    /// Estimated Jaccard similarity at or above which a candidate is a duplicate.
    pub threshold: f64,
    pub seed: u64,
}

impl Default for MinHashConfig {
    /// Word 5-grams, 128 permutations as 16 bands × 8 rows (candidates from Jaccard ≈ 0.7),
    /// duplicates from 0.8.
    fn default() -> Self {
        MinHashConfig {
            shingle: 5,
            bands: 16,
            rows: 8,
            threshold: 0.8,
            seed: 42,
        }
    }
}

impl MinHashConfig {
    pub fn permutations(&self) -> usize {
        self.bands * self.rows
    }
}

pub type Signature = Vec<u32>;

pub struct MinHasher {
    config: MinHashConfig,
    a: Vec<u64>,
    b: Vec<u64>,
}

/// The hashes of a text's word shingles (lower-cased words, punctuation removed).
pub fn shingles(text: &str, size: usize, seed: u64) -> Vec<u64> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return vec![];
    }
    let size = size.min(words.len());
    let mut joined = String::new();
    let mut hashes: Vec<u64> = words
        .windows(size)
        .map(|gram| {
            joined.clear();
            for (i, w) in gram.iter().enumerate() {
                if i > 0 {
                    joined.push(' ');
                }
                joined.push_str(w);
            }
            xxh3_64_with_seed(joined.as_bytes(), seed)
        })
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// Exact Jaccard similarity of two sorted, deduplicated shingle sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    both as f64 / (a.len() + b.len() - both) as f64
}

impl MinHasher {
    pub fn new(config: MinHashConfig) -> MinHasher {
        // SplitMix64 from the seed: the same seed gives the same permutations everywhere.
        let mut state = config.seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let n = config.permutations();
        let a = (0..n).map(|_| next() | 1).collect();
        let b = (0..n).map(|_| next()).collect();
        MinHasher { config, a, b }
    }

    pub fn config(&self) -> &MinHashConfig {
        &self.config
    }

    pub fn signature(&self, text: &str) -> Signature {
        let shingles = shingles(text, self.config.shingle, self.config.seed);
        let mut signature = vec![u32::MAX; self.a.len()];
        for &x in &shingles {
            for (slot, (a, b)) in signature.iter_mut().zip(self.a.iter().zip(&self.b)) {
                let h = (a.wrapping_mul(x).wrapping_add(*b) >> 32) as u32;
                if h < *slot {
                    *slot = h;
                }
            }
        }
        signature
    }
}

/// The share of equal positions: an estimate of the Jaccard similarity.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len().max(1) as f64
}

/// Accepted documents' signatures, bucketed by band.
pub struct LshIndex {
    config: MinHashConfig,
    buckets: HashMap<u64, Vec<u32>>,
    signatures: Vec<Signature>,
    ids: Vec<String>,
}

/// The earlier document a new one duplicates.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub id: String,
    pub estimated_jaccard: f64,
}

impl LshIndex {
    pub fn new(config: MinHashConfig) -> LshIndex {
        LshIndex {
            config,
            buckets: HashMap::new(),
            signatures: vec![],
            ids: vec![],
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn band_keys<'a>(&'a self, signature: &'a [u32]) -> impl Iterator<Item = u64> + 'a {
        signature
            .chunks(self.config.rows)
            .enumerate()
            .map(|(band, rows)| {
                let bytes: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
                xxh3_64_with_seed(&bytes, band as u64)
            })
    }

    /// Every indexed document at or above the threshold, most similar first.
    pub fn matches(&self, signature: &[u32]) -> Vec<Match> {
        let mut docs: Vec<u32> = self
            .band_keys(signature)
            .filter_map(|key| self.buckets.get(&key))
            .flatten()
            .copied()
            .collect();
        docs.sort_unstable();
        docs.dedup();
        let mut found: Vec<Match> = docs
            .into_iter()
            .map(|doc| {
                (
                    doc,
                    estimated_jaccard(signature, &self.signatures[doc as usize]),
                )
            })
            .filter(|(_, similarity)| *similarity >= self.config.threshold)
            .map(|(doc, similarity)| Match {
                id: self.ids[doc as usize].clone(),
                estimated_jaccard: similarity,
            })
            .collect();
        found.sort_by(|a, b| b.estimated_jaccard.total_cmp(&a.estimated_jaccard));
        found
    }

    /// The most similar indexed document at or above the threshold, if any.
    pub fn query(&self, signature: &[u32]) -> Option<Match> {
        self.matches(signature).into_iter().next()
    }

    pub fn insert(&mut self, id: String, signature: Signature) {
        let doc = self.ids.len() as u32;
        let keys: Vec<u64> = self.band_keys(&signature).collect();
        for key in keys {
            self.buckets.entry(key).or_default().push(doc);
        }
        self.signatures.push(signature);
        self.ids.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun by the river bank";

    #[test]
    fn estimates_track_exact_jaccard() {
        let hasher = MinHasher::new(MinHashConfig::default());
        let near = A.replace("cat sleeps", "cat naps");
        let other = "an entirely different sentence about ships sailing across a grey and stormy northern sea at night";
        for (text, low, high) in [(A, 1.0, 1.0), (near.as_str(), 0.5, 0.9), (other, 0.0, 0.05)] {
            let exact = jaccard(&shingles(A, 5, 42), &shingles(text, 5, 42));
            let estimate = estimated_jaccard(&hasher.signature(A), &hasher.signature(text));
            assert!((low..=high).contains(&exact), "{exact}");
            assert!(
                (estimate - exact).abs() < 0.15,
                "estimate {estimate} vs exact {exact}"
            );
        }
        // Case and punctuation do not change shingles.
        assert_eq!(
            shingles("The Quick, brown fox!", 2, 1),
            shingles("the quick brown fox", 2, 1)
        );
    }

    #[test]
    fn index_finds_near_duplicates_above_the_threshold_only() {
        let config = MinHashConfig::default();
        let hasher = MinHasher::new(config);
        let mut index = LshIndex::new(config);
        let long = A.repeat(3) + " and then some more words at the very end";
        index.insert("a".into(), hasher.signature(&long));
        let copy = long.replace("very end", "final end");
        let found = index.query(&hasher.signature(&copy)).unwrap();
        assert_eq!(found.id, "a");
        assert!(found.estimated_jaccard >= 0.8);
        assert!(
            index
                .query(
                    &hasher.signature(
                        "nothing like it at all, really not the same words in any order"
                    )
                )
                .is_none()
        );
    }
}
