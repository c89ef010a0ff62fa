use super::*;

fn cut(text: &str, size: usize, overlap: usize) -> Vec<Chunk> {
    let config = ChunkConfig { size, overlap };
    config.validate().unwrap();
    chunks(text, &config, &words)
}

/// Every chunk is its range of the text, within the size, numbered in order.
fn assert_well_formed(text: &str, chunks: &[Chunk], size: usize) {
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index, i);
        assert_eq!(c.text, text[c.range.clone()]);
        assert!(
            words(&c.text) <= size,
            "{:?} has {} words",
            c.text,
            words(&c.text)
        );
    }
    for pair in chunks.windows(2) {
        assert!(
            pair[0].range.start < pair[1].range.start,
            "passages move on"
        );
        let gap = pair[0].range.end.min(pair[1].range.start)..pair[1].range.start;
        assert!(
            text[gap].trim().is_empty(),
            "no text skipped between passages"
        );
    }
}

const PROSE: &str = "Hamlet is the prince of Denmark. His father was killed by Claudius! \
Who will avenge him? Ophelia loves him. Polonius is her father. Laertes is her brother.";

#[test]
fn passages_hold_whole_sentences_and_overlap_by_the_last_ones() {
    let chunks = cut(PROSE, 12, 5);
    assert_well_formed(PROSE, &chunks, 12);
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "Hamlet is the prince of Denmark. His father was killed by Claudius!",
            // The last sentence (6 words) is longer than the overlap (5): not repeated.
            "Who will avenge him? Ophelia loves him. Polonius is her father.",
            // The last sentence (4 words) fits in the overlap: repeated.
            "Polonius is her father. Laertes is her brother.",
        ]
    );
    // Without overlap, each sentence is in exactly one passage.
    let apart = cut(PROSE, 12, 0);
    assert_well_formed(PROSE, &apart, 12);
    for pair in apart.windows(2) {
        assert!(pair[0].range.end <= pair[1].range.start);
    }
    assert_eq!(
        apart.iter().map(|c| words(&c.text)).sum::<usize>(),
        words(PROSE)
    );
}

#[test]
fn code_blocks_stay_whole_and_a_long_one_is_cut_between_lines() {
    let text = "Run it like this.\n```sh\nquark up\nquark models\n```\nThen ask it. It answers.\n";
    let chunks = cut(text, 6, 0);
    assert_well_formed(text, &chunks, 6);
    let block = chunks.iter().find(|c| c.text.contains("quark up")).unwrap();
    assert!(block.text.starts_with("```sh") && block.text.trim_end().ends_with("```"));
    assert!(block.text.contains("quark models"));

    let long: String = (0..12).map(|i| format!("let x{i} = {i};\n")).collect();
    let text = format!("Code follows.\n```rust\n{long}```\nThe end.");
    let chunks = cut(&text, 8, 0);
    assert_well_formed(&text, &chunks, 8);
    for c in chunks.iter().filter(|c| c.text.contains("let x")) {
        // Cut between lines only: every line in a passage is whole.
        for line in c.text.lines().filter(|l| l.contains("let x")) {
            assert!(line.starts_with("let x") && line.ends_with(';'), "{line:?}");
        }
    }
    let lines: usize = chunks.iter().map(|c| c.text.matches("let x").count()).sum();
    assert_eq!(lines, 12, "every line once");
}

#[test]
fn an_unclosed_fence_runs_to_the_end() {
    let text = "Intro sentence here.\n```\ncode one\ncode two\n";
    let chunks = cut(text, 50, 0);
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        chunks[0].text,
        text.trim_end_matches('\n').to_string() + "\n"
    );
}

#[test]
fn a_sentence_longer_than_a_passage_is_cut_between_words() {
    let sentence = (0..25)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
        + ".";
    let chunks = cut(&sentence, 10, 0);
    assert_well_formed(&sentence, &chunks, 10);
    assert_eq!(
        chunks.iter().map(|c| words(&c.text)).collect::<Vec<_>>(),
        [10, 10, 5]
    );
    assert!(chunks[0].text.starts_with("w0 ") && chunks[2].text.ends_with("w24."));
}

#[test]
fn a_caller_measure_sets_the_size() {
    // Characters instead of words.
    let chunks = chunks(
        PROSE,
        &ChunkConfig {
            size: 40,
            overlap: 0,
        },
        &|t: &str| t.chars().count(),
    );
    assert!(chunks.iter().all(|c| c.text.chars().count() <= 40));
    assert!(chunks.len() > 3);
}

#[test]
fn documents_without_text_have_no_passages() {
    assert!(cut("", 10, 2).is_empty());
    assert!(cut("  \n\n\t ", 10, 2).is_empty());
}

#[test]
fn bad_sizes_are_refused() {
    assert!(
        ChunkConfig {
            size: 0,
            overlap: 0
        }
        .validate()
        .is_err()
    );
    let err = ChunkConfig {
        size: 10,
        overlap: 10,
    }
    .validate()
    .unwrap_err();
    assert!(err.contains("overlap"), "{err}");
}
