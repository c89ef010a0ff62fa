//! Text metrics for generated answers: SQuAD's exact match and token F1 (after its
//! normalisation: lower case, no punctuation, no articles, single spaces) and ROUGE-L F1
//! (longest common subsequence of tokens).

/// SQuAD normalisation, as tokens.
fn tokens(text: &str) -> Vec<String> {
    let lower: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_string)
        .collect()
}

pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(tokens(prediction) == tokens(reference)))
}

fn f1(overlap: usize, predicted: usize, expected: usize) -> f64 {
    if predicted == 0 || expected == 0 {
        return f64::from(u8::from(predicted == expected));
    }
    if overlap == 0 {
        return 0.0;
    }
    let precision = overlap as f64 / predicted as f64;
    let recall = overlap as f64 / expected as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Harmonic mean of token precision and recall, counting shared tokens with multiplicity.
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (tokens(prediction), tokens(reference));
    let mut counts = std::collections::HashMap::<&str, i64>::new();
    for t in &r {
        *counts.entry(t).or_default() += 1;
    }
    let overlap = p
        .iter()
        .filter(|t| {
            let c = counts.entry(t.as_str()).or_default();
            *c -= 1;
            *c >= 0
        })
        .count();
    f1(overlap, p.len(), r.len())
}

/// ROUGE-L F1: the longest common subsequence of the two token sequences.
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (tokens(prediction), tokens(reference));
    let mut row = vec![0usize; r.len() + 1];
    for a in &p {
        let mut diagonal = 0;
        for (j, b) in r.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if a == b {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    f1(row[r.len()], p.len(), r.len())
}

/// The value below which `q` of the sorted `values` lie (nearest rank); 0 when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation_and_scores() {
        assert_eq!(exact_match("The Eiffel Tower!", "eiffel tower"), 1.0);
        assert_eq!(exact_match("Eiffel", "eiffel tower"), 0.0);
        // 1 shared token: precision 1/1, recall 1/2.
        assert!((token_f1("Eiffel", "the Eiffel tower") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("paris paris", "paris"), 2.0 * 0.5 / 1.5);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("x", ""), 0.0);
    }

    #[test]
    fn rouge_l_is_the_longest_common_subsequence() {
        // LCS of "police killed the gunman" and "police kill the gunman" (the removed) = 2 of 3.
        let score = rouge_l("police killed the gunman", "police kill the gunman");
        assert!((score - 2.0 / 3.0).abs() < 1e-12, "{score}");
        assert_eq!(rouge_l("a b c d", "a b c d"), 1.0);
        assert_eq!(rouge_l("x y", "a b"), 0.0);
        // Order matters: subsequence, not bag of words.
        assert!((rouge_l("z y x", "x y z") - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.95), 5.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
