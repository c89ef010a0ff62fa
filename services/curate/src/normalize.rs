//! Unicode normalisation and the key exact deduplication compares.

use unicode_normalization::UnicodeNormalization;
use xxhash_rust::xxh3::xxh3_128;

/// NFKC (compatibility forms folded: ﬁ → fi, full-width → ASCII), `\r\n` and `\r` → `\n`,
/// control characters other than `\n` and `\t` dropped, trailing spaces cut from each line.
pub fn normalize(text: &str) -> String {
    let unified = text.replace("\r\n", "\n").replace('\r', "\n");
    let folded: String = unified
        .nfkc()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    let mut out = String::with_capacity(folded.len());
    for (i, line) in folded.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(line.trim_end());
    }
    out.trim_matches('\n').to_string()
}

/// Identical for texts that differ only in case and whitespace.
pub fn exact_key(normalized: &str) -> u128 {
    let mut canonical = String::with_capacity(normalized.len());
    for word in normalized.split_whitespace() {
        if !canonical.is_empty() {
            canonical.push(' ');
        }
        canonical.extend(word.chars().flat_map(char::to_lowercase));
    }
    xxh3_128(canonical.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_compatibility_forms_and_line_endings() {
        assert_eq!(
            normalize("ﬁne\r\nＡＢＣ  \r\x07tab\there\n\n"),
            "fine\nABC\ntab\there"
        );
        assert_eq!(normalize("cafe\u{301}"), "café");
        assert_eq!(exact_key("To  be,\nor NOT"), exact_key("to be, or not"));
        assert_ne!(exact_key("to be"), exact_key("to bee"));
    }
}
