use super::*;

fn feedback(rating: i32, correction: Option<&str>, preferred: Option<&str>) -> FeedbackReceived {
    FeedbackReceived {
        header: EventHeader::root("test"),
        feedback_id: Id::random(),
        request_id: "r".into(),
        model_id: "m".into(),
        prompt: "Mail me at jane.doe@acme-mail.com".into(),
        response: "no".into(),
        rating,
        correction: correction.map(str::to_string),
        preferred_response: preferred.map(str::to_string),
        labels: vec![],
    }
}

#[test]
fn feedback_becomes_scrubbed_examples_of_the_right_kind() {
    let sft = examples(&feedback(1, Some("Sure: call 415-555-0134"), None));
    assert_eq!(sft.len(), 1);
    assert_eq!(sft[0].0, DatasetKind::Sft);
    let record = sft[0].1.to_string();
    assert!(
        !record.contains("jane.doe") && !record.contains("555-0134"),
        "{record}"
    );
    assert!(
        record.contains("<EMAIL>") && record.contains("<PHONE>"),
        "{record}"
    );

    let kinds = |f| examples(&f).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        kinds(feedback(2, None, Some("better"))),
        [DatasetKind::Preference, DatasetKind::Eval]
    );
    assert_eq!(
        kinds(feedback(5, None, Some("better"))),
        [DatasetKind::Preference]
    );
    assert_eq!(kinds(feedback(1, None, None)), [DatasetKind::Eval]);
    // Preferring the served response, or nothing, is no preference.
    assert_eq!(kinds(feedback(5, None, Some(" no "))), []);
    assert_eq!(kinds(feedback(2, None, Some("  "))), [DatasetKind::Eval]);
    assert!(kinds(feedback(4, None, None)).is_empty());
}

#[test]
fn the_same_example_has_the_same_key_whatever_its_spacing_or_case() {
    let a = examples(&feedback(1, Some("The answer is 42."), None));
    let b = examples(&feedback(1, Some("the  answer is 42."), None));
    assert_eq!(key(a[0].0, &a[0].1), key(b[0].0, &b[0].1));
    let c = examples(&feedback(1, Some("The answer is 43."), None));
    assert_ne!(key(a[0].0, &a[0].1), key(c[0].0, &c[0].1));
}
