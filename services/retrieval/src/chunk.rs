//! Documents cut into passages for embedding and search. A passage holds whole sentences
//! (Unicode sentence boundaries, UAX #29) and whole fenced code blocks up to `size`, and the
//! next passage repeats the last units of the one before, up to `overlap`, so an answer that
//! straddles a cut is still found whole. Sizes are counted by a caller's measure (the
//! encoder's tokens, say), or in words. Only a unit larger than `size` is cut: a code block
//! between its lines, a sentence between its words.

use serde::{Deserialize, Serialize};
use std::ops::Range;
use unicode_segmentation::UnicodeSegmentation;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkConfig {
    /// Largest passage, in the measure's units.
    pub size: usize,
    /// Most of a passage repeated at the start of the next.
    pub overlap: usize,
}

impl ChunkConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("chunk size must be at least 1".into());
        }
        if self.overlap >= self.size {
            return Err(format!(
                "chunk overlap ({}) must be smaller than the chunk size ({})",
                self.overlap, self.size
            ));
        }
        Ok(())
    }
}

/// One passage: its place among the document's passages, its text and its byte range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Chunk {
    pub index: usize,
    pub text: String,
    pub range: Range<usize>,
}

/// The default measure: Unicode words.
pub fn words(text: &str) -> usize {
    text.unicode_words().count()
}

/// A stretch of the document kept whole when it fits: a sentence, a code block, or a piece
/// of one too large for a passage.
struct Unit {
    range: Range<usize>,
    size: usize,
}

/// `text`'s passages under `config`, sizes counted by `measure`. A document with no text
/// has none.
pub fn chunks(text: &str, config: &ChunkConfig, measure: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let units = units(text, config.size, measure);
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < units.len() {
        let (mut end, mut total) = (start, 0);
        while end < units.len() && (end == start || total + units[end].size <= config.size) {
            total += units[end].size;
            end += 1;
        }
        let range = units[start].range.start..units[end - 1].range.end;
        chunks.push(Chunk {
            index: chunks.len(),
            text: text[range.clone()].to_string(),
            range,
        });
        if end == units.len() {
            break;
        }
        // Repeat the last units that fit in the overlap, always moving on by one at least.
        let (mut next, mut tail) = (end, 0);
        while next > start + 1 && tail + units[next - 1].size <= config.overlap {
            tail += units[next - 1].size;
            next -= 1;
        }
        start = next;
    }
    chunks
}

/// The document's units in order: fenced code blocks (```` ``` ```` or `~~~` lines) whole,
/// the prose between them as sentences; any unit over `size` cut smaller.
fn units(text: &str, size: usize, measure: &dyn Fn(&str) -> usize) -> Vec<Unit> {
    let mut cut = Cutter {
        text,
        size,
        measure,
        units: Vec::new(),
    };
    let mut prose_start = 0;
    let mut fence: Option<(&str, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let marker = ["```", "~~~"]
            .into_iter()
            .find(|m| line.trim_start().starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => {
                cut.sentences(prose_start..offset);
                fence = Some((m, offset));
            }
            (Some((open, begin)), Some(m)) if m == open => {
                cut.piece(begin..offset + line.len(), split_lines);
                prose_start = offset + line.len();
                fence = None;
            }
            _ => {}
        }
        offset += line.len();
    }
    match fence {
        // An unclosed fence runs to the end of the document.
        Some((_, begin)) => cut.piece(begin..text.len(), split_lines),
        None => cut.sentences(prose_start..text.len()),
    }
    cut.units
}

/// One document being cut into units of at most `size`.
struct Cutter<'a> {
    text: &'a str,
    size: usize,
    measure: &'a dyn Fn(&str) -> usize,
    units: Vec<Unit>,
}

impl Cutter<'_> {
    fn sentences(&mut self, span: Range<usize>) {
        let text = self.text;
        for (at, sentence) in text[span.clone()].split_sentence_bound_indices() {
            let trimmed = sentence.trim_end();
            if trimmed.trim_start().is_empty() {
                continue;
            }
            let lead = trimmed.len() - trimmed.trim_start().len();
            let begin = span.start + at + lead;
            self.piece(begin..span.start + at + trimmed.len(), split_words);
        }
    }

    /// `range` as one unit when it fits, else as the pieces `split` cuts it into, each as
    /// large as fits (a piece that cannot be cut further stands alone).
    fn piece(&mut self, range: Range<usize>, split: fn(&str) -> Vec<Range<usize>>) {
        let (text, size, measure) = (self.text, self.size, self.measure);
        let whole = measure(&text[range.clone()]);
        if whole <= size {
            self.units.push(Unit { range, size: whole });
            return;
        }
        let base = range.start;
        let mut current: Option<Unit> = None;
        for part in split(&text[range]) {
            let part = base + part.start..base + part.end;
            let part_size = measure(&text[part.clone()]);
            // Sizes add up part by part: measuring the growing piece again would be quadratic.
            current = match current.take() {
                Some(c) if c.size + part_size > size => {
                    self.units.push(c);
                    Some(Unit {
                        range: part,
                        size: part_size,
                    })
                }
                Some(c) => Some(Unit {
                    range: c.range.start..part.end,
                    size: c.size + part_size,
                }),
                None => Some(Unit {
                    range: part,
                    size: part_size,
                }),
            };
        }
        self.units.extend(current);
    }
}

fn split_lines(text: &str) -> Vec<Range<usize>> {
    let mut at = 0;
    text.split_inclusive('\n')
        .map(|line| {
            let range = at..at + line.len();
            at += line.len();
            range
        })
        .collect()
}

fn split_words(text: &str) -> Vec<Range<usize>> {
    text.split_word_bound_indices()
        .filter(|(_, w)| !w.trim().is_empty())
        .map(|(at, w)| at..at + w.len())
        .collect()
}

#[cfg(test)]
mod tests;
