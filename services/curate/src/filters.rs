//! Document filters: quality heuristics in the style of Gopher and C4, a toxicity scorer
//! behind a trait (a scored lexicon by default), and language identification.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64;

/// Why a filter rejected a document: `quality:word_count`, `toxicity`, `language:fra`, …
pub type Reason = String;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityConfig {
    pub min_words: usize,
    pub max_words: usize,
    pub min_mean_word_length: f64,
    pub max_mean_word_length: f64,
    /// `#` and `…` per word.
    pub max_symbol_ratio: f64,
    /// Share of non-empty lines that end in punctuation.
    pub min_punctuated_lines: f64,
    /// Share of non-empty lines that repeat an earlier line.
    pub max_duplicate_lines: f64,
    /// Share of characters covered by the most frequent word 2-, 3- and 4-gram (Gopher).
    pub max_top_ngram: [f64; 3],
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            min_words: 50,
            max_words: 1_000_000,
            min_mean_word_length: 3.0,
            max_mean_word_length: 10.0,
            max_symbol_ratio: 0.1,
            min_punctuated_lines: 0.1,
            max_duplicate_lines: 0.3,
            max_top_ngram: [0.2, 0.18, 0.16],
        }
    }
}

/// The first quality rule `text` breaks, if any.
pub fn quality(text: &str, config: &QualityConfig) -> Option<Reason> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let reject = |rule: &str| Some(format!("quality:{rule}"));
    if words.len() < config.min_words || words.len() > config.max_words {
        return reject("word_count");
    }
    let lengths: Vec<usize> = words.iter().map(|w| w.chars().count()).collect();
    let chars: usize = lengths.iter().sum();
    let mean = chars as f64 / words.len() as f64;
    if mean < config.min_mean_word_length || mean > config.max_mean_word_length {
        return reject("mean_word_length");
    }
    let symbols =
        text.matches('#').count() + text.matches('…').count() + text.matches("...").count();
    if symbols as f64 / words.len() as f64 > config.max_symbol_ratio {
        return reject("symbol_ratio");
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let punctuated = lines
        .iter()
        .filter(|l| l.ends_with(['.', '!', '?', ',', ';', ':', '"', '\'', '”', '’', ')']))
        .count();
    if (punctuated as f64) < config.min_punctuated_lines * lines.len() as f64 {
        return reject("punctuated_lines");
    }
    let mut seen = std::collections::HashSet::new();
    let repeated = lines.iter().filter(|l| !seen.insert(**l)).count();
    if repeated as f64 > config.max_duplicate_lines * lines.len() as f64 {
        return reject("duplicate_lines");
    }
    // N-grams keyed by their words' hashes: no string per n-gram.
    let hashes: Vec<u64> = words
        .iter()
        .map(|w| xxh3_64(w.to_lowercase().as_bytes()))
        .collect();
    for (n, limit) in (2..=4).zip(config.max_top_ngram) {
        let mut counts: HashMap<u64, (usize, usize)> = HashMap::new();
        for (i, gram) in hashes.windows(n).enumerate() {
            let key = gram.iter().fold(0u64, |key, h| {
                key.rotate_left(17) ^ h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            });
            let entry = counts
                .entry(key)
                .or_insert_with(|| (0, lengths[i..i + n].iter().sum()));
            entry.0 += 1;
        }
        // (count, characters): ties go to the longer n-gram, never to iteration order.
        if let Some((count, gram_chars)) = counts.into_values().filter(|(c, _)| *c > 1).max()
            && (count * gram_chars) as f64 > limit * chars as f64
        {
            return reject(&format!("top_{n}gram"));
        }
    }
    None
}

/// Scores how toxic a text is, 0 (not at all) and up. A classifier can replace the lexicon.
pub trait ToxicityScorer: Send + Sync {
    fn score(&self, text: &str) -> f64;
}

/// A weighted word list: the score is the summed weight of listed words per 100 words.
pub struct Lexicon {
    weights: HashMap<String, f64>,
}

impl Lexicon {
    /// Lines of `word<TAB>weight`; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Lexicon, String> {
        let mut weights = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (word, weight) = line
                .split_once('\t')
                .ok_or_else(|| format!("lexicon line {}: expected word<TAB>weight", i + 1))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("lexicon line {}: bad weight {weight:?}", i + 1))?;
            weights.insert(word.trim().to_lowercase(), weight);
        }
        Ok(Lexicon { weights })
    }

    /// The built-in English list (`lexicon/en.tsv`).
    pub fn english() -> Lexicon {
        Lexicon::parse(include_str!("../lexicon/en.tsv")).expect("built-in lexicon")
    }
}

impl ToxicityScorer for Lexicon {
    fn score(&self, text: &str) -> f64 {
        let mut words = 0usize;
        let mut total = 0.0;
        for word in text.split(|c: char| !c.is_alphanumeric() && c != '\'') {
            if word.is_empty() {
                continue;
            }
            words += 1;
            if let Some(w) = self.weights.get(&word.to_lowercase()) {
                total += w;
            }
        }
        100.0 * total / words.max(1) as f64
    }
}

/// The language of `text` as an ISO 639-3 code when the detector is confident.
pub fn language(text: &str) -> Option<&'static str> {
    // Detection on a prefix is as good and bounded in time for long documents.
    let end = text.char_indices().nth(4096).map_or(text.len(), |(i, _)| i);
    whatlang::detect(&text[..end])
        .filter(|info| info.is_reliable())
        .map(|info| info.lang().code())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROSE: &str = "It was a bright cold day in April, and the clocks were striking thirteen. \
        Winston Smith, his chin nuzzled into his breast in an effort to escape the vile wind, \
        slipped quickly through the glass doors of Victory Mansions, though not quickly enough \
        to prevent a swirl of gritty dust from entering along with him. The hallway smelt of \
        boiled cabbage and old rag mats.";

    #[test]
    fn quality_rules_each_reject_what_they_target() {
        let config = QualityConfig::default();
        assert_eq!(quality(PROSE, &config), None);
        assert_eq!(
            quality("too short.", &config).as_deref(),
            Some("quality:word_count")
        );
        let spam = "buy now ".repeat(60);
        assert!(quality(&spam, &config).unwrap().starts_with("quality:"));
        let hashtags = PROSE
            .split(' ')
            .map(|w| format!("#{w}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            quality(&hashtags, &config).as_deref(),
            Some("quality:symbol_ratio")
        );
        let menu = (0..80)
            .map(|i| format!("item number {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            quality(&menu, &config).as_deref(),
            Some("quality:punctuated_lines")
        );
        let repeated = format!("{PROSE}\n{}", "Subscribe to our newsletter.\n".repeat(30));
        assert_eq!(
            quality(&repeated, &config).as_deref(),
            Some("quality:duplicate_lines")
        );
        let long_words = "Pneumonoultramicroscopicsilicovolcanoconiosis is long. ".repeat(30);
        assert_eq!(
            quality(&long_words, &config).as_deref(),
            Some("quality:mean_word_length")
        );
    }

    #[test]
    fn lexicon_scores_per_hundred_words() {
        let lexicon = Lexicon::parse("# test\nidiot\t2\nmoron\t1.5\n").unwrap();
        assert_eq!(lexicon.score(PROSE), 0.0);
        let score = lexicon.score("you idiot, you absolute moron");
        assert!((score - 100.0 * 3.5 / 5.0).abs() < 1e-9, "{score}");
        assert!(Lexicon::parse("word without weight").is_err());
        assert!(Lexicon::english().score("what the fuck is this shit") > 10.0);
    }

    #[test]
    fn identifies_languages() {
        assert_eq!(language(PROSE), Some("eng"));
        assert_eq!(
            language(
                "Il était une fois, dans un pays lointain, une princesse qui vivait dans un grand château entouré de forêts."
            ),
            Some("fra")
        );
        assert_eq!(language("ok"), None);
    }
}
