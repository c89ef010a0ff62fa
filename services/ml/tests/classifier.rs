//! The multi-label linear classifier on features whose labels it can learn: two labels, each
//! carried by the examples on one side of its own hyperplane, one of them rare.

use quark_ml::classifier::{Classifier, ClassifierConfig, binary_score};

/// `n` points in 8 dimensions on a fixed pseudo-random walk; label 0 when the first
/// coordinate is positive, label 1 (about one in ten) when the second is above 0.8.
fn examples(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
    };
    let features: Vec<Vec<f32>> = (0..n).map(|_| (0..8).map(|_| next()).collect()).collect();
    let targets = features
        .iter()
        .map(|x| vec![x[0] > 0.0, x[1] > 0.8])
        .collect();
    (features, targets)
}

#[test]
fn it_learns_each_label_and_reloads_the_same() {
    let labels = vec!["common".to_string(), "rare".to_string()];
    let (x, y) = examples(600, 1);
    let config = ClassifierConfig {
        epochs: 400,
        ..Default::default()
    };
    let classifier = Classifier::train(labels.clone(), &x, &y, &config).unwrap();
    let (test_x, test_y) = examples(300, 2);
    let scores = classifier.score(&test_x, &test_y).unwrap();
    println!("{scores:?}");
    assert_eq!(scores[0].label, "common");
    assert!(scores[0].f1 > 0.95, "{:?}", scores[0]);
    // The rare label is found thanks to its positives' weight.
    assert!(
        scores[1].support > 10 && scores[1].recall > 0.8,
        "{:?}",
        scores[1]
    );

    let dir = tempfile::tempdir().unwrap();
    classifier.save(dir.path()).unwrap();
    let loaded = Classifier::load(dir.path()).unwrap();
    assert_eq!(loaded.labels, labels);
    assert_eq!(loaded.dimension(), 8);
    assert_eq!(
        loaded.probabilities(&test_x).unwrap(),
        classifier.probabilities(&test_x).unwrap()
    );
}

#[test]
fn features_of_another_width_and_ragged_targets_are_refused() {
    let (x, y) = examples(20, 3);
    let labels = vec!["a".to_string(), "b".to_string()];
    let classifier = Classifier::train(labels.clone(), &x, &y, &Default::default()).unwrap();
    let err = classifier.probabilities(&[vec![0.0; 5]]).unwrap_err();
    assert!(err.to_string().contains("5 values"), "{err}");
    let err = Classifier::train(labels, &x, &y[..10], &Default::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("20 target rows"), "{err}");
}

#[test]
fn scores_count_hits_misses_and_false_alarms() {
    // (predicted, true): 2 hits, 1 false alarm, 1 miss, 1 correct rejection.
    let pairs = [
        (true, true),
        (true, true),
        (true, false),
        (false, true),
        (false, false),
    ];
    let s = binary_score("x", pairs.into_iter());
    assert_eq!(
        (s.precision, s.recall, s.support),
        (2.0 / 3.0, 2.0 / 3.0, 3)
    );
    assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
    let none = binary_score("y", [(false, false)].into_iter());
    assert_eq!((none.precision, none.recall, none.f1), (0.0, 0.0, 0.0));
}
