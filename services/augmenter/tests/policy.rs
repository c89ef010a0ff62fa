//! The augmenter's release policy over real SQLite and a real artifact store: the threshold,
//! manual and scheduled requests, a live regression, and idempotence under replays.

mod common;

use common::Augmenter as Policy;
use quark_events::*;
use std::collections::HashMap;

impl Policy {
    async fn lines(&self, dataset: &DatasetPrepared) -> Vec<serde_json::Value> {
        let bytes = self.store.get(&dataset.train).await.unwrap();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn feedback(rating: i32, prompt: &str, correction: Option<&str>, preferred: Option<&str>) -> Event {
    Event::FeedbackReceived(FeedbackReceived {
        header: EventHeader::root("test"),
        feedback_id: Id::random(),
        request_id: "r".into(),
        model_id: "m".into(),
        prompt: prompt.into(),
        response: "served".into(),
        rating,
        correction: correction.map(str::to_string),
        preferred_response: preferred.map(str::to_string),
        labels: vec![],
    })
}

fn correction(prompt: &str, answer: &str) -> Event {
    feedback(1, prompt, Some(answer), None)
}

fn ask(trigger: RetrainTrigger) -> Event {
    Event::RetrainRequested(RetrainRequested::to_policy("test", trigger, "test"))
}

fn datasets(events: &[Event]) -> HashMap<DatasetKind, DatasetPrepared> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::DatasetPrepared(d) => Some((d.kind, d.clone())),
            _ => None,
        })
        .collect()
}

fn retrain(events: &[Event]) -> Option<RetrainRequested> {
    events.iter().find_map(|e| match e {
        Event::RetrainRequested(r) => Some(r.clone()),
        _ => None,
    })
}

fn requests(events: &[Event]) -> Vec<RetrainRequested> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RetrainRequested(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn preference_pairs_reach_the_threshold_on_their_own_and_ask_for_dpo() {
    let policy = Policy::new(2).await;
    let first = feedback(2, "Who is Hamlet?", None, Some("The prince of Denmark."));
    assert!(policy.feed(&first).await.is_empty());
    let second = feedback(4, "Who is Ophelia?", None, Some("Polonius's daughter."));
    let out = policy.feed(&second).await;
    let released = datasets(&out);
    let pairs = &released[&DatasetKind::Preference];
    assert_eq!(pairs.train_examples, 2);
    let records = policy.lines(pairs).await;
    let first_pair: serde_json::Value =
        serde_json::from_str(records[0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            first_pair["chosen"].as_str(),
            first_pair["rejected"].as_str()
        ),
        (Some("The prince of Denmark."), Some("served"))
    );
    let asked = requests(&out);
    assert_eq!(asked.len(), 2, "no correction, no SFT: {asked:?}");
    // A reward model first, then DPO, both on the pairs.
    for (request, kind) in asked.iter().zip([RunKind::Reward, RunKind::Dpo]) {
        assert_eq!(
            (request.run_kind, request.dataset_ids.clone()),
            (kind, vec![pairs.dataset_id])
        );
        assert_eq!(request.trigger, RetrainTrigger::FeedbackThreshold);
    }
    assert_ne!(asked[0].request_id, asked[1].request_id);
    // Redelivered, the same feedback releases nothing again.
    assert!(policy.feed(&second).await.is_empty());
}

fn labelled(prompt: &str, labels: &[&str]) -> Event {
    let Event::FeedbackReceived(mut f) = feedback(4, prompt, None, None) else {
        unreachable!()
    };
    f.labels = labels.iter().map(|l| l.to_string()).collect();
    Event::FeedbackReceived(f)
}

#[tokio::test]
async fn intent_labels_become_an_intents_dataset_and_ask_for_no_training() {
    let policy = Policy::new(2).await;
    // Not an intent label, and an intent label without a name: nothing to learn.
    assert!(
        policy
            .feed(&labelled("Hello", &["task:qa", "intent: "]))
            .await
            .is_empty()
    );
    let first = labelled(
        "Can I get a refund for my order?",
        &["intent:chat", "intent:billing"],
    );
    assert!(policy.feed(&first).await.is_empty());
    let out = policy
        .feed(&labelled(
            "Why was my card charged twice?",
            &["intent:billing"],
        ))
        .await;
    let released = datasets(&out);
    assert_eq!(released.keys().collect::<Vec<_>>(), [&DatasetKind::Intents]);
    let mut records: Vec<serde_json::Value> = policy
        .lines(&released[&DatasetKind::Intents])
        .await
        .iter()
        .map(|line| serde_json::from_str(line["text"].as_str().unwrap()).unwrap())
        .collect();
    records.sort_by_key(|r| r["text"].as_str().unwrap().to_string());
    // The last intent label of a feedback is its intent.
    assert_eq!(
        records,
        [
            serde_json::json!({"text": "Can I get a refund for my order?", "intent": "billing"}),
            serde_json::json!({"text": "Why was my card charged twice?", "intent": "billing"}),
        ]
    );
    // The gateway learns intents datasets itself: no trainer is asked.
    assert!(requests(&out).is_empty(), "{out:?}");
    assert!(policy.feed(&first).await.is_empty());
}

/// A response.served of `prompt`, served `at` ms after the epoch.
fn served(request_id: &str, prompt: &str, at: i64) -> Event {
    let Event::ResponseServed(mut r) = samples::sample(EventKind::ResponseServed, "gateway") else {
        unreachable!()
    };
    r.header.occurred_at = Timestamp(at);
    (r.request_id, r.prompt) = (request_id.into(), prompt.into());
    Event::ResponseServed(r)
}

#[tokio::test]
async fn preference_pairs_also_optimise_the_policy_on_recent_served_prompts() {
    let settings = quark_runtime::config::AugmentSettings {
        min_examples: 1,
        release_interval_secs: 0,
        reward_model: true,
        rloo_prompts: 4,
        training_timeout_secs: 3600,
    };
    let policy = Policy::with(settings).await;
    let now = Timestamp::now().0;
    // Four distinct prompts (one twice, one with an e-mail address) before the feedback, one
    // after it.
    for (i, prompt) in [
        "Who is Hamlet?",
        "Who is Yorick?",
        "Who is Hamlet?",
        "Write to ann.lee@gmail.com",
        "Who is Laertes?",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            policy
                .feed(&served(&format!("r{i}"), prompt, now - 5000 + i as i64))
                .await
                .is_empty()
        );
    }
    assert!(
        policy
            .feed(&served("late", "Who comes later?", now + 60_000))
            .await
            .is_empty()
    );
    let out = policy
        .feed(&feedback(2, "Who is Horatio?", None, Some("A friend.")))
        .await;
    let released = datasets(&out);
    let prompts = &released[&DatasetKind::Prompts];
    let lines: Vec<serde_json::Value> = policy
        .lines(prompts)
        .await
        .iter()
        .map(|l| serde_json::from_str(l["text"].as_str().unwrap()).unwrap())
        .collect();
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l["prompt"].as_str().unwrap())
        .collect();
    // The pair's own prompt first, then the most recent distinct ones served before the
    // feedback, newest first, scrubbed: four in all, so the oldest (Yorick) is left out.
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert_eq!(texts[..2], ["Who is Horatio?", "Who is Laertes?"]);
    assert!(
        texts[2].starts_with("Write to ") && !texts[2].contains("ann.lee@gmail.com"),
        "{texts:?}"
    );
    assert_eq!(texts[3], "Who is Hamlet?");
    // A reward model, DPO, then RLOO (a ppo run) on the prompts.
    let asked: Vec<(RunKind, Vec<Id>)> = requests(&out)
        .into_iter()
        .map(|r| (r.run_kind, r.dataset_ids))
        .collect();
    let pairs = released[&DatasetKind::Preference].dataset_id;
    assert_eq!(
        asked,
        [
            (RunKind::Reward, vec![pairs]),
            (RunKind::Dpo, vec![pairs]),
            (RunKind::Ppo, vec![prompts.dataset_id])
        ]
    );
}

/// A plain rating of `response` to `prompt`.
fn rated(rating: i32, prompt: &str, response: &str) -> Event {
    let Event::FeedbackReceived(mut f) = feedback(rating, prompt, None, None) else {
        unreachable!()
    };
    f.response = response.into();
    Event::FeedbackReceived(f)
}

#[tokio::test]
async fn thumbs_up_and_down_on_two_answers_to_one_prompt_make_a_preference_pair() {
    let policy = Policy::new(1).await;
    // Up on one answer; a 3 teaches nothing; down on the same answer (spaced and cased
    // otherwise) prefers nothing.
    assert!(
        policy
            .feed(&rated(5, "Who is Hamlet?", "The prince."))
            .await
            .is_empty()
    );
    assert!(
        policy
            .feed(&rated(3, "Who is Hamlet?", "A Dane."))
            .await
            .is_empty()
    );
    let same = policy
        .feed(&rated(1, "who is  hamlet?", "the prince."))
        .await;
    assert!(
        !datasets(&same).contains_key(&DatasetKind::Preference),
        "{same:?}"
    );
    // Down on another answer to the same prompt: the answer rated up is chosen over it.
    let second = rated(2, "who is  Hamlet?", "Ophelia's brother.");
    let out = policy.feed(&second).await;
    let pairs = &datasets(&out)[&DatasetKind::Preference];
    let records: Vec<serde_json::Value> = policy
        .lines(pairs)
        .await
        .iter()
        .map(|l| serde_json::from_str(l["text"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        records,
        [
            serde_json::json!({"prompt": "Who is Hamlet?", "chosen": "The prince.", "rejected": "Ophelia's brother."})
        ]
    );
    assert_eq!(
        requests(&out)
            .iter()
            .map(|r| r.run_kind)
            .collect::<Vec<_>>(),
        [RunKind::Reward, RunKind::Dpo]
    );
    // The same ratings again: nothing new.
    assert!(policy.feed(&second).await.is_empty());
}

#[tokio::test]
async fn the_threshold_releases_every_kind_once_and_replays_add_nothing() {
    let policy = Policy::new(3).await;
    let batch = [
        correction("Who killed the king?", "Claudius did."),
        feedback(5, "Who is Hamlet?", None, Some("The prince of Denmark.")),
        feedback(1, "Where is Elsinore?", None, None),
        correction("Who loves Desdemona?", "Othello."),
        // The same correction with other spacing and case: one example.
        correction("who loves  Desdemona?", "othello."),
    ];
    for event in &batch {
        assert!(policy.feed(event).await.is_empty(), "below the threshold");
    }
    assert_eq!(policy.examples().await, 4);

    let last = correction("Mail jane.doe@acme-mail.com", "Write to her at the castle.");
    let out = policy.feed(&last).await;
    let released = datasets(&out);
    assert_eq!(released.len(), 3, "{out:?}");
    let sft = &released[&DatasetKind::Sft];
    assert_eq!(sft.train_examples, 3);
    let ids = |events: &[&Event]| {
        let mut ids: Vec<Id> = events
            .iter()
            .map(|e| match e {
                Event::FeedbackReceived(f) => f.feedback_id,
                _ => unreachable!(),
            })
            .collect();
        ids.sort();
        ids
    };
    let mut sources = sft.source_collections.clone();
    sources.sort();
    assert_eq!(sources, ids(&[&batch[0], &batch[3], &last]));
    let records = policy.lines(sft).await;
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| !r["text"].as_str().unwrap().contains("jane.doe")),
        "PII is scrubbed: {records:?}"
    );
    assert_eq!(released[&DatasetKind::Preference].train_examples, 1);
    assert_eq!(released[&DatasetKind::Eval].train_examples, 1);
    let request = retrain(&out).unwrap();
    assert_eq!(request.trigger, RetrainTrigger::FeedbackThreshold);
    assert_eq!(request.dataset_ids, [sft.dataset_id]);
    assert_eq!(request.header.causation_id, Some(last.header().event_id));
    // The preference pair released beside the corrections is asked of a reward model and DPO.
    let runs: Vec<(RunKind, Vec<Id>)> = requests(&out)
        .into_iter()
        .map(|r| (r.run_kind, r.dataset_ids))
        .collect();
    let preference = released[&DatasetKind::Preference].dataset_id;
    assert_eq!(
        runs,
        [
            (RunKind::Sft, vec![sft.dataset_id]),
            (RunKind::Reward, vec![preference]),
            (RunKind::Dpo, vec![preference])
        ]
    );

    // A replay of every feedback (same events) and a redelivery of the last: nothing new.
    for event in batch.iter().chain([&last]) {
        assert!(policy.feed(event).await.is_empty());
    }
    assert_eq!(policy.examples().await, 5);
}

#[tokio::test]
async fn manual_and_scheduled_requests_release_what_is_pending() {
    let policy = Policy::new(10).await;
    let first = correction("Who killed the king?", "Claudius did.");
    assert!(policy.feed(&first).await.is_empty());

    // Manual, one correction pending: it is released and trained on.
    let manual = ask(RetrainTrigger::Manual);
    let out = policy.feed(&manual).await;
    let sft1 = datasets(&out)[&DatasetKind::Sft].clone();
    assert_eq!(sft1.train_examples, 1);
    let request = retrain(&out).unwrap();
    assert_eq!(
        (request.trigger, request.dataset_ids.clone()),
        (RetrainTrigger::Manual, vec![sft1.dataset_id])
    );
    assert_eq!(request.header.causation_id, Some(manual.header().event_id));
    // Its own answer names a dataset: not for the policy, nothing happens.
    assert!(
        policy
            .feed(&Event::RetrainRequested(request))
            .await
            .is_empty()
    );

    // Scheduled, nothing pending: nothing. Scheduled, an evaluation case pending: released,
    // with no training (there is no correction).
    assert!(policy.feed(&ask(RetrainTrigger::Schedule)).await.is_empty());
    assert!(
        policy
            .feed(&feedback(2, "Where is Elsinore?", None, None))
            .await
            .is_empty()
    );
    let out = policy.feed(&ask(RetrainTrigger::Schedule)).await;
    assert_eq!(
        datasets(&out).keys().collect::<Vec<_>>(),
        [&DatasetKind::Eval]
    );
    assert!(retrain(&out).is_none());

    // Scheduled with a correction pending: released and trained on.
    policy
        .feed(&correction("Who loves Desdemona?", "Othello."))
        .await;
    let out = policy.feed(&ask(RetrainTrigger::Schedule)).await;
    let sft2 = datasets(&out)[&DatasetKind::Sft].clone();
    let request = retrain(&out).unwrap();
    assert_eq!(
        (request.trigger, request.dataset_ids),
        (RetrainTrigger::Schedule, vec![sft2.dataset_id])
    );

    // Manual, nothing pending: every SFT dataset released so far, oldest first.
    let out = policy.feed(&ask(RetrainTrigger::Manual)).await;
    assert!(datasets(&out).is_empty());
    assert_eq!(
        retrain(&out).unwrap().dataset_ids,
        [sft1.dataset_id, sft2.dataset_id]
    );
}

#[tokio::test]
async fn a_live_regression_releases_pending_corrections_below_the_threshold() {
    let policy = Policy::new(10).await;
    let regression = |source| {
        Event::EvalRegressed(EvalRegressed {
            header: EventHeader::root("registry"),
            evaluation_id: Id::random(),
            model_id: Id::random(),
            baseline_model_id: None,
            source,
            metrics: HashMap::new(),
            regressions: vec![],
            report: None,
        })
    };
    // Nothing pending: nothing to do.
    assert!(
        policy
            .feed(&regression(RegressionSource::LiveTelemetry))
            .await
            .is_empty()
    );
    policy
        .feed(&correction("Who killed the king?", "Claudius did."))
        .await;
    // An offline evaluation's regression is the gate's business, not a reason to release.
    assert!(
        policy
            .feed(&regression(RegressionSource::OfflineGate))
            .await
            .is_empty()
    );
    let out = policy
        .feed(&regression(RegressionSource::LiveTelemetry))
        .await;
    assert_eq!(retrain(&out).unwrap().trigger, RetrainTrigger::Regression);
    assert_eq!(datasets(&out)[&DatasetKind::Sft].train_examples, 1);
}

/// The model.trained a trainer sends when it is done with `request`.
fn trained(request: &RetrainRequested) -> Event {
    let Event::ModelTrained(mut m) = samples::sample(EventKind::ModelTrained, "trainer") else {
        unreachable!()
    };
    m.header = EventHeader::caused_by(&request.header, "trainer", "model");
    Event::ModelTrained(m)
}

/// `event` as if it happened `secs` seconds after `after`.
fn later(mut event: Event, after: &EventHeader, secs: i64) -> Event {
    let header = match &mut event {
        Event::FeedbackReceived(f) => &mut f.header,
        _ => unreachable!(),
    };
    header.occurred_at.0 = after.occurred_at.0 + secs * 1000;
    event
}

#[tokio::test]
async fn while_a_released_training_is_in_flight_new_corrections_wait_and_go_together() {
    let policy = Policy::new(2).await;
    policy
        .feed(&correction("Who killed the king?", "Claudius."))
        .await;
    let out = policy
        .feed(&correction("Who is Hamlet?", "The prince."))
        .await;
    let first = retrain(&out).unwrap();
    // The augmenter reads its own request back from the bus: a training is in flight.
    assert!(
        policy
            .feed(&Event::RetrainRequested(first.clone()))
            .await
            .is_empty()
    );

    // Three corrections cross the threshold twice: they wait. Intent labels, which start no
    // training, are released as usual.
    let waiting = [
        correction("Where is Elsinore?", "In Denmark."),
        correction("Who loves Ophelia?", "Hamlet."),
        correction("Who is Yorick?", "The king's jester."),
    ];
    for event in &waiting {
        assert!(policy.feed(event).await.is_empty(), "held while in flight");
    }
    policy
        .feed(&labelled("Refund my order", &["intent:billing"]))
        .await;
    let out = policy
        .feed(&labelled("Card charged twice", &["intent:billing"]))
        .await;
    assert_eq!(
        datasets(&out).keys().collect::<Vec<_>>(),
        [&DatasetKind::Intents]
    );
    assert!(requests(&out).is_empty(), "{out:?}");

    // Another service's model.trained answers nothing; the request's answer releases the
    // three as one dataset and one training, once.
    let Event::ModelTrained(unrelated) = samples::sample(EventKind::ModelTrained, "trainer") else {
        unreachable!()
    };
    assert!(
        policy
            .feed(&Event::ModelTrained(unrelated))
            .await
            .is_empty()
    );
    let answer = trained(&first);
    let out = policy.feed(&answer).await;
    let sft = &datasets(&out)[&DatasetKind::Sft];
    assert_eq!(sft.train_examples, 3);
    let second = retrain(&out).unwrap();
    assert_eq!(
        (second.dataset_ids.clone(), second.trigger),
        (vec![sft.dataset_id], RetrainTrigger::FeedbackThreshold)
    );
    assert_eq!(second.header.causation_id, Some(answer.header().event_id));
    assert!(
        policy.feed(&answer).await.is_empty(),
        "a redelivered answer"
    );

    // A request never answered (the trainer refused it) holds the threshold back only until
    // the timeout, by event time.
    policy.feed(&Event::RetrainRequested(second.clone())).await;
    let pair = [
        correction("Who is Horatio?", "Hamlet's friend."),
        correction("Who is Laertes?", "Ophelia's brother."),
    ];
    policy
        .feed(&later(pair[0].clone(), &second.header, 10))
        .await;
    assert!(
        policy
            .feed(&later(pair[1].clone(), &second.header, 3599))
            .await
            .is_empty()
    );
    let late = correction("Who is Osric?", "A courtier.");
    let out = policy.feed(&later(late, &second.header, 3601)).await;
    assert_eq!(datasets(&out)[&DatasetKind::Sft].train_examples, 3);
    assert_eq!(requests(&out).len(), 1);
}
