//! Malformed files into the collectors and then the curation pipeline: binary data, invalid
//! UTF-8, a line of megabytes, a file over the size limit, HTML nested 100,000 deep (it
//! overflowed the stack, then took html5ever 45 s: now refused by depth before parsing),
//! unclosed tags by the ten thousand, a zip bomb and broken JSON lines. Each is collected or
//! skipped with its reason; nothing panics and nothing is expanded.

use quark_collect::files::{FileOptions, collect};
use quark_curate::dedup::DedupIndex;
use quark_curate::filters::Lexicon;
use quark_curate::minhash::MinHashConfig;
use quark_curate::pipeline::{CurateConfig, Curator, Outcome};
use std::io::Write;

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A zip archive of one file of `size` zeros, deflated to a few kilobytes.
fn zip_bomb(size: usize) -> Vec<u8> {
    let python = std::env::var("QUARK_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "import io, sys, zipfile\nb = io.BytesIO()\n\
         with zipfile.ZipFile(b, 'w', zipfile.ZIP_DEFLATED) as z:\n    z.writestr('zeros.txt', bytes({size}))\n\
         sys.stdout.buffer.write(b.getvalue())"
    );
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn malformed_files_are_skipped_with_their_reason_or_read_and_curated_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "binary.txt", &[b'a', 0, 159, 146, 150, 0, b'z']);
    write(
        d,
        "latin1.txt",
        b"caf\xe9 au lait, and more words to make a document",
    );
    let long_line = "forsooth ".repeat(1 << 20); // 9 MiB, one line
    write(d, "long-line.txt", long_line.as_bytes());
    write(d, "too-large.txt", &vec![b'a'; (16 << 20) + 1]);
    let deep = format!(
        "<html><body>{}<p>At the bottom of the well.</p>{}</body></html>",
        "<div>".repeat(100_000),
        "</div>".repeat(100_000)
    );
    write(d, "deep.html", deep.as_bytes());
    // Twenty thousand paragraphs, items and cells never closed, nor the document.
    let unclosed = format!(
        "<html><body>{}text",
        "<p>line<li>item<td>cell".repeat(20_000)
    );
    write(d, "unclosed.html", unclosed.as_bytes());
    let bomb = zip_bomb(512 << 20);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    write(d, "bomb.zip", &bomb);
    write(d, "bomb.txt.gz", &bomb);
    let mut lines = std::fs::File::create(d.join("broken.jsonl")).unwrap();
    writeln!(
        lines,
        "{{\"text\": \"a good line of text for the corpus\"}}"
    )
    .unwrap();
    writeln!(lines, "{{\"text\": 7}}").unwrap();
    writeln!(lines, "{{\"text\": \"unterminated").unwrap();
    writeln!(lines, "[1, 2, 3]").unwrap();
    drop(lines);

    let collected = collect(d, &FileOptions::default()).unwrap();
    let skipped: Vec<(&str, &str)> = collected
        .skipped
        .iter()
        .map(|s| (s.source.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("binary.txt", "binary"),
            ("bomb.txt.gz", "unsupported file type"),
            ("bomb.zip", "unsupported file type"),
            ("broken.jsonl:2", "not JSON with a string \"text\""),
            ("broken.jsonl:3", "not JSON with a string \"text\""),
            ("broken.jsonl:4", "not JSON with a string \"text\""),
            (
                "deep.html",
                "HTML nested 100000 elements deep (more than 4096)"
            ),
            ("latin1.txt", "invalid UTF-8"),
            ("too-large.txt", "too large (16777217 bytes > 16777216)"),
        ]
    );
    let ids: Vec<&str> = collected.documents.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["broken.jsonl:1", "long-line.txt", "unclosed.html"]);
    let text = |id: &str| {
        &collected
            .documents
            .iter()
            .find(|d| d.id == id)
            .unwrap()
            .text
    };
    assert!(text("unclosed.html").ends_with("text"));
    assert_eq!(text("long-line.txt").len(), long_line.len());

    // The whole curation takes them: each is kept or rejected with a reason.
    let mut curator = Curator::new(
        CurateConfig::default(),
        DedupIndex::in_memory(MinHashConfig::default()),
        Box::new(Lexicon::english()),
    );
    let outcomes = curator.curate(collected.documents.clone());
    assert_eq!(outcomes.len(), 3);
    let rejected: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Rejected {
                document, reason, ..
            } => Some(format!("{} {reason}", document.id)),
            Outcome::Kept { .. } => None,
        })
        .collect();
    // A million copies of one word is not text anyone should train on.
    assert!(
        rejected
            .iter()
            .any(|r| r.starts_with("long-line.txt quality:")),
        "{rejected:?}"
    );
}
