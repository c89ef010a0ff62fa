//! The curation pipeline end to end: filters with reasons, PII scrubbing, exact and near
//! duplicates, and incremental deduplication across runs through the on-disk index.

use quark_curate::dedup::DedupIndex;
use quark_curate::filters::Lexicon;
use quark_curate::minhash::MinHashConfig;
use quark_curate::pipeline::{CurateConfig, Curator, Document, Outcome};
use quark_curate::store::{DatasetWriter, read_documents};

const PROSE: [&str; 3] = [
    "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass doors of Victory Mansions, though not quickly enough to prevent a swirl of gritty dust from entering along with him.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world. It is a way I have of driving off the spleen and regulating the circulation.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families.",
];

fn doc(id: &str, text: &str) -> Document {
    Document {
        id: id.into(),
        text: text.into(),
        source: "test".into(),
    }
}

fn config() -> CurateConfig {
    CurateConfig {
        quality: Some(quark_curate::filters::QualityConfig {
            min_words: 20,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn reasons(outcomes: &[Outcome]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Kept { document } => (document.id.clone(), "kept".into()),
            Outcome::Rejected {
                document, reason, ..
            } => (document.id.clone(), reason.clone()),
        })
        .collect()
}

#[test]
fn every_document_is_kept_or_rejected_with_its_reason_and_dedup_spans_runs() {
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let open = |tag: &str| DedupIndex::open(&index_dir, MinHashConfig::default(), tag).unwrap();
    let mut curator = Curator::new(config(), open("run-1"), Box::new(Lexicon::english()));
    let with_pii = format!("{} Write to jane.doe@gmail.com for more.", PROSE[2]);
    let outcomes = curator.curate(vec![
        doc("orwell", PROSE[0]),
        doc("melville", PROSE[1]),
        doc("orwell-again", &PROSE[0].to_uppercase().replace(". ", ".  ")),
        doc("short", "Too short to be a document."),
        doc("french", "Il était une fois, dans un pays lointain, une princesse qui vivait dans un grand château entouré de forêts sombres et de rivières profondes, et chaque matin elle regardait les oiseaux."),
        doc("rude", &format!("{} fuck this shit, fucking bullshit.", PROSE[1].replace("Ishmael", "Bob"))),
        doc("austen", &with_pii),
        doc("empty", "   \n\t "),
    ]);
    assert_eq!(
        reasons(&outcomes),
        [
            ("orwell", "kept"),
            ("melville", "kept"),
            ("orwell-again", "duplicate:exact"),
            ("short", "quality:word_count"),
            ("french", "language:fra"),
            ("rude", "toxicity"),
            ("austen", "kept"),
            ("empty", "empty"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let Outcome::Kept { document } = &outcomes[6] else {
        panic!()
    };
    assert!(document.text.ends_with("Write to <EMAIL> for more."));
    assert_eq!(curator.stats.pii.get("email"), Some(&1));
    assert_eq!(curator.stats.kept, 3);
    assert_eq!(curator.stats.rejected.values().sum::<u64>(), 5);
    assert_eq!(curator.stats.samples["toxicity"][0].id, "rude");

    let out = dir.path().join("dataset");
    let mut writer = DatasetWriter::create(&out, 0.0).unwrap();
    writer.write(&outcomes).unwrap();
    assert_eq!(writer.train_documents, 3);
    writer.finish(&curator.stats).unwrap();
    curator.index.flush().unwrap();
    assert_eq!(read_documents(&out.join("train.jsonl")).unwrap().len(), 3);
    let rejects = std::fs::read_to_string(out.join("rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 5, "nothing silently lost");
    assert!(rejects.contains("\"reason\":\"language:fra\""));
    drop(curator);

    // A new run with the same index: near and exact copies of earlier documents are caught.
    let mut curator = Curator::new(config(), open("run-2"), Box::new(Lexicon::english()));
    assert_eq!(curator.index.len(), 3);
    let near = PROSE[1].replace(
        "never mind how long precisely",
        "never mind how long exactly",
    );
    let outcomes = curator.curate(vec![
        doc("melville-edited", &near),
        doc("austen-copy", &with_pii),
        doc(
            "new",
            &PROSE[2]
                .replace("wife", "husband")
                .replace("truth", "fact")
                .replace("fortune", "estate")
                .replace("neighbourhood", "town")
                .replace("families", "houses"),
        ),
    ]);
    assert_eq!(
        reasons(&outcomes)[0],
        ("melville-edited".into(), "duplicate:near".into())
    );
    let Outcome::Rejected {
        duplicate_of,
        estimated_jaccard,
        ..
    } = &outcomes[0]
    else {
        panic!()
    };
    assert_eq!(duplicate_of.as_deref(), Some("melville"));
    assert!(estimated_jaccard.unwrap() >= 0.8);
    assert_eq!(reasons(&outcomes)[1].1, "duplicate:exact");
    assert_eq!(reasons(&outcomes)[2].1, "kept", "different enough to keep");

    // An index built with other MinHash settings is refused rather than silently mixed.
    let other = MinHashConfig {
        bands: 32,
        rows: 4,
        ..Default::default()
    };
    assert!(DedupIndex::open(&index_dir, other, "run-3").is_err());

    // Run 1 curated again (its event redelivered after a crash) decides as it did the first time.
    curator.index.flush().unwrap();
    let replay = DedupIndex::open(&index_dir, MinHashConfig::default(), "run-1").unwrap();
    assert_eq!(
        replay.len(),
        1,
        "only run 2's document is visible to a replay of run 1"
    );
    let mut curator = Curator::new(config(), replay, Box::new(Lexicon::english()));
    let again = curator.curate(vec![doc("orwell", PROSE[0]), doc("melville", PROSE[1])]);
    assert_eq!(
        reasons(&again),
        [
            ("orwell".to_string(), "kept".to_string()),
            ("melville".to_string(), "kept".to_string())
        ]
    );
}

#[test]
fn a_forgotten_document_no_longer_counts_and_the_runs_that_accepted_it_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let open = |tag: &str| DedupIndex::open(&index_dir, MinHashConfig::default(), tag).unwrap();
    let curate = |tag: &str, docs: Vec<Document>| {
        let mut curator = Curator::new(config(), open(tag), Box::new(Lexicon::english()));
        let outcomes = reasons(&curator.curate(docs));
        curator.index.flush().unwrap();
        outcomes
    };
    curate(
        "run-1",
        vec![doc("orwell", PROSE[0]), doc("melville", PROSE[1])],
    );
    let copy = curate("run-2", vec![doc("orwell-copy", PROSE[0])]);
    assert_eq!(copy[0].1, "duplicate:exact");

    assert_eq!(DedupIndex::forget(&index_dir, "orwell").unwrap(), ["run-1"]);
    assert_eq!(
        DedupIndex::forget(&index_dir, "orwell").unwrap(),
        ["run-1"],
        "asked again, the same answer"
    );
    assert!(DedupIndex::forget(&index_dir, "nobody").unwrap().is_empty());
    assert_eq!(open("run-3").len(), 1, "melville alone still counts");
    let again = curate("run-3", vec![doc("orwell", PROSE[0])]);
    assert_eq!(again[0].1, "kept", "no longer a duplicate of anything");
    assert_eq!(
        DedupIndex::forget(&index_dir, "orwell").unwrap(),
        ["run-1", "run-3"]
    );
}
