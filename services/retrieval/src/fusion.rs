//! Reciprocal rank fusion (Cormack, Clarke and Büttcher, 2009): rankings of the same items
//! from different searches (vector and full text) merged by `Σ 1 / (k + rank)`, so an item
//! ranked well by either search rises without the two scores having to share a scale.

use std::collections::HashMap;
use std::hash::Hash;

/// The usual constant: it damps the weight of the very first ranks.
pub const K: f64 = 60.0;

/// `rankings` (each best first) merged, best first, with each item's fused score. Ties keep
/// the order in which items were first seen, ranking by ranking.
pub fn reciprocal_rank<T: Clone + Eq + Hash>(rankings: &[Vec<T>], k: f64) -> Vec<(T, f64)> {
    let mut scores: HashMap<T, (f64, usize)> = HashMap::new();
    let mut seen = 0;
    for ranking in rankings {
        for (rank, item) in ranking.iter().enumerate() {
            let entry = scores.entry(item.clone()).or_insert_with(|| {
                seen += 1;
                (0.0, seen)
            });
            entry.0 += 1.0 / (k + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(T, f64, usize)> = scores
        .into_iter()
        .map(|(item, (score, first))| (item, score, first))
        .collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    fused
        .into_iter()
        .map(|(item, score, _)| (item, score))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_both_searches_find_rank_above_items_one_finds() {
        let vector = vec!["a", "b", "c"];
        let text = vec!["c", "b", "d"];
        let fused = reciprocal_rank(&[vector, text], K);
        let order: Vec<&str> = fused.iter().map(|(i, _)| *i).collect();
        // c: 1/63 + 1/61 = 0.032266; b: 2/62 = 0.032258; a: 1/61; d: 1/63. Ranked first by
        // one search and third by the other beats second by both, by a hair.
        assert_eq!(order, ["c", "b", "a", "d"]);
        assert!((fused[0].1 - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-12);
        assert!((fused[1].1 - 2.0 / 62.0).abs() < 1e-12);
        // Either search alone ranks below what both find.
        assert!(fused[2].1 < fused[1].1 && fused[3].1 < fused[2].1);
    }

    #[test]
    fn one_ranking_keeps_its_order_and_ties_keep_first_seen() {
        let fused = reciprocal_rank(&[vec![3, 1, 2]], K);
        assert_eq!(fused.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [3, 1, 2]);
        let tied = reciprocal_rank(&[vec!["x"], vec!["y"]], K);
        assert_eq!(tied.iter().map(|(i, _)| *i).collect::<Vec<_>>(), ["x", "y"]);
        assert!(reciprocal_rank::<u8>(&[], K).is_empty());
    }
}
