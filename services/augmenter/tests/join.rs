//! Feedback joined to its response from the log: in either order, once, with the release it
//! completes caused by the feedback; feedback for a response never served stays parked, listed.

mod common;

use common::Augmenter;
use quark_augmenter::join;
use quark_events::*;

impl Augmenter {
    async fn parked(&self) -> Vec<FeedbackReceived> {
        join::parked(&self.db).await.unwrap()
    }

    /// The one SFT record a release holds.
    async fn released(&self, out: &[Event]) -> serde_json::Value {
        let dataset = out
            .iter()
            .find_map(|e| match e {
                Event::DatasetPrepared(d) if d.kind == DatasetKind::Sft => Some(d.clone()),
                _ => None,
            })
            .expect("an SFT dataset is released");
        let text = String::from_utf8(self.store.get(&dataset.train).await.unwrap()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        serde_json::from_str(line["text"].as_str().unwrap()).unwrap()
    }
}

fn served(request_id: &str) -> ResponseServed {
    let mut r = match quark_events::samples::sample(EventKind::ResponseServed, "gateway") {
        Event::ResponseServed(r) => r,
        _ => unreachable!(),
    };
    r.request_id = request_id.into();
    r.prompt = "Who is Hamlet?".into();
    r.response = "A cook.".into();
    r
}

/// Feedback as the gateway sends it: the request id, no prompt or response.
fn feedback(request_id: &str) -> FeedbackReceived {
    FeedbackReceived {
        header: EventHeader::root("gateway"),
        feedback_id: Id::random(),
        request_id: request_id.into(),
        model_id: String::new(),
        prompt: String::new(),
        response: String::new(),
        rating: 1,
        correction: Some("The prince of Denmark.".into()),
        preferred_response: None,
        labels: vec![],
    }
}

fn retrain(out: &[Event]) -> RetrainRequested {
    out.iter()
        .find_map(|e| match e {
            Event::RetrainRequested(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a retraining is requested")
}

const LEARNT: &str = r#"{"prompt":"Who is Hamlet?","response":"The prince of Denmark."}"#;

#[tokio::test]
async fn feedback_before_its_response_is_parked_then_completed_once() {
    let augmenter = Augmenter::new(1).await;
    let f = feedback("chatcmpl-1");
    assert!(augmenter.feed(&f.clone().into()).await.is_empty());
    assert_eq!(augmenter.parked().await, std::slice::from_ref(&f));
    assert_eq!(augmenter.examples().await, 0);

    let response = Event::ResponseServed(served("chatcmpl-1"));
    let out = augmenter.feed(&response).await;
    let learnt: serde_json::Value = serde_json::from_str(LEARNT).unwrap();
    assert_eq!(augmenter.released(&out).await, learnt);
    // The release counts as the feedback's, as if it had arrived after its response.
    let request = retrain(&out);
    assert_eq!(request.header.causation_id, Some(f.header.event_id));
    assert_eq!(request.header.correlation_id, f.header.correlation_id);
    assert!(augmenter.parked().await.is_empty());
    assert_eq!(augmenter.examples().await, 1);

    // Redelivered, neither the response nor the feedback adds or releases anything.
    assert!(augmenter.feed(&response).await.is_empty());
    assert!(augmenter.feed(&f.into()).await.is_empty());
    assert_eq!(augmenter.examples().await, 1);
    assert!(augmenter.parked().await.is_empty());
}

#[tokio::test]
async fn feedback_after_its_response_is_joined_at_once() {
    let augmenter = Augmenter::new(1).await;
    assert!(augmenter.feed(&served("cmpl-2").into()).await.is_empty());
    let f = feedback("cmpl-2");
    let out = augmenter.feed(&f.clone().into()).await;
    let learnt: serde_json::Value = serde_json::from_str(LEARNT).unwrap();
    assert_eq!(augmenter.released(&out).await, learnt);
    assert_eq!(retrain(&out).header.causation_id, Some(f.header.event_id));
    assert!(augmenter.parked().await.is_empty());
}

#[tokio::test]
async fn feedback_for_a_response_never_served_stays_parked_and_listed() {
    let augmenter = Augmenter::new(1).await;
    let f = feedback("chatcmpl-never");
    assert!(augmenter.feed(&f.clone().into()).await.is_empty());
    // Another response completes nothing of it.
    assert!(
        augmenter
            .feed(&served("chatcmpl-other").into())
            .await
            .is_empty()
    );
    assert_eq!(augmenter.parked().await, [f]);
    assert_eq!(augmenter.examples().await, 0);
    // Feedback that needs no example (a good rating) is not parked.
    let mut fine = feedback("chatcmpl-never-2");
    (fine.rating, fine.correction) = (5, None);
    assert!(augmenter.feed(&fine.into()).await.is_empty());
    assert_eq!(augmenter.parked().await.len(), 1);
}

#[tokio::test]
async fn feedback_that_carries_its_prompt_and_response_needs_no_join() {
    let augmenter = Augmenter::new(1).await;
    let mut f = feedback("req-from-elsewhere");
    (f.prompt, f.response) = ("Who is Hamlet?".into(), "A cook.".into());
    let out = augmenter.feed(&f.into()).await;
    let learnt: serde_json::Value = serde_json::from_str(LEARNT).unwrap();
    assert_eq!(augmenter.released(&out).await, learnt);
    assert!(augmenter.parked().await.is_empty());
}
