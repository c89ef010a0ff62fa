//! Alignment in the loop, end to end over the real broker, SQLite, libtorch and HTTP:
//! preference feedback sent to the gateway becomes a preference dataset, the augmenter asks
//! for a reward model and DPO, the trainer trains the one and aligns the champion against its
//! own log-probabilities, the evaluator gates the policy (by the reward model's win rate among
//! the rest) and the registry promotes it, with no one touching it. Redelivered
//! feedback, a redelivered request and a new request for the same pairs train nothing twice;
//! pairs that cannot teach and a reward-model job with no pairs go to the dead-letter topic
//! with their reason. The prompts served are released too, and the champion is optimised on
//! them against the reward model (RLOO), that policy gated like the rest.

use quark_e2e::*;
use quark_events::bus::{Publisher, dlq_topic, headers};
use quark_events::{
    Alias, DatasetKind, DatasetPrepared, Event, EventHeader, EventKind, Id, ModelTrained,
    PromotionReason, RetrainRequested, RetrainTrigger, RunKind,
};
use quark_runtime::ArtifactStore;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Questions of the plays with the answers a user prefers to the champion's.
const PREFERENCES: &[(&str, &str)] = &[
    (
        "Who killed the king of Denmark?",
        "Claudius killed the king.",
    ),
    ("Where does Hamlet live?", "Hamlet lives at Elsinore."),
    ("Who loves Desdemona?", "Othello loves Desdemona."),
    (
        "What did the witches tell Macbeth?",
        "That he would be king.",
    ),
];

fn of_kind(events: &[Event], run_kind: RunKind) -> Vec<ModelTrained> {
    let mut models = trained(events);
    models.retain(|m| m.run_kind == run_kind);
    models
}

fn aligned(events: &[Event]) -> Vec<ModelTrained> {
    of_kind(events, RunKind::Dpo)
}

fn publish(quark: &Stack, events: &[Event]) {
    let publisher = Publisher::new(&quark.broker.bus(), "probe").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for event in events {
        runtime.block_on(publisher.publish(event)).unwrap();
    }
}

/// Whether the stack's log has a line with this message (and these fields).
fn logged(quark: &Stack, message: &str, fields: &[(&str, &str)]) -> bool {
    quark.log_fields("up").iter().any(|line| {
        line["message"] == message
            && fields
                .iter()
                .all(|(k, v)| line[*k].as_str().is_some_and(|s| s.contains(v)))
    })
}

fn store(quark: &Stack) -> ArtifactStore {
    ArtifactStore::local(quark.data.path().join("quark").join("artifacts")).unwrap()
}

/// The `prompt`s of a prompts dataset.
fn prompts_of(quark: &Stack, dataset: &DatasetPrepared) -> HashSet<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bytes = runtime.block_on(store(quark).get(&dataset.train)).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|line| {
            let document: serde_json::Value = serde_json::from_str(line).unwrap();
            let record: serde_json::Value =
                serde_json::from_str(document["text"].as_str().unwrap()).unwrap();
            record["prompt"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The dataset.prepared with this id.
fn dataset_of(quark: &Stack, id: Id) -> DatasetPrepared {
    quark
        .events(EventKind::DatasetPrepared)
        .into_iter()
        .find_map(|e| match e {
            Event::DatasetPrepared(d) if d.dataset_id == id => Some(d),
            _ => None,
        })
        .unwrap()
}

/// What the gate measured of a model, passed (eval.completed) or not (eval.regressed).
fn gate_metrics(quark: &Stack, model: Id) -> HashMap<String, f64> {
    let mut metrics = None;
    wait_for("the gate's verdict", Duration::from_secs(300), || {
        metrics = quark
            .events(EventKind::EvalCompleted)
            .into_iter()
            .chain(quark.events(EventKind::EvalRegressed))
            .find_map(|e| match e {
                Event::EvalCompleted(c) if c.model_id == model => Some(c.metrics),
                Event::EvalRegressed(r) if r.model_id == model => Some(r.metrics),
                _ => None,
            });
        metrics.is_some()
    });
    metrics.unwrap()
}

/// A preference dataset of `records` (the augmenter's document form), and a request of
/// `run_kind` on it.
fn job_on(quark: &Stack, records: &[&str], run_kind: RunKind) -> (DatasetPrepared, Event) {
    let store = store(quark);
    let jsonl: String = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"id": format!("p{i}"), "text": r, "source": "probe"}).to_string() + "\n"
        })
        .collect();
    let train = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.put(jsonl.as_bytes()))
        .unwrap();
    let dataset = DatasetPrepared {
        header: EventHeader::root("probe"),
        dataset_id: Id::random(),
        name: "probe-preference".into(),
        kind: DatasetKind::Preference,
        train,
        validation: None,
        rejects: None,
        train_examples: records.len() as i64,
        validation_examples: 0,
        stats: HashMap::new(),
        source_collections: vec![],
        parent_dataset_id: None,
    };
    let request = Event::RetrainRequested(RetrainRequested {
        header: EventHeader::root("probe"),
        request_id: Id::random(),
        run_kind,
        base_model_id: None,
        dataset_ids: vec![dataset.dataset_id],
        trigger: RetrainTrigger::Manual,
        reason: "probe".into(),
    });
    (dataset, request)
}

#[test]
fn preference_feedback_aligns_the_champion_by_dpo_through_the_gate_once() {
    let mut quark = Stack::new();
    // The prompts served are released too, and the champion optimised on them (RLOO).
    for (key, value) in [
        ("QUARK__AUGMENT__RLOO_PROMPTS", "16"),
        ("QUARK__TRAINER__RLOO__STEPS", "10"),
        ("QUARK__TRAINER__RLOO__MAX_NEW_TOKENS", "12"),
    ] {
        quark.env.push((key.into(), value.into()));
    }
    let first = quark.serve_first_champion();

    // Preference feedback → preference dataset → DPO request → aligned policy.
    // The answer served is poor (2 of 5); this one is preferred.
    let feedback_ids = quark.rate(PREFERENCES, 2, "preferred_response");
    let request = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) if r.run_kind == RunKind::Dpo => Some(r.clone()),
        _ => None,
    });
    assert_eq!(request.trigger, RetrainTrigger::FeedbackThreshold);
    let dataset = dataset_of(&quark, request.dataset_ids[0]);
    assert_eq!(dataset.kind, DatasetKind::Preference);
    let sources: HashSet<String> = dataset
        .source_collections
        .iter()
        .map(Id::to_string)
        .collect();
    assert_eq!(
        sources,
        feedback_ids.iter().cloned().collect::<HashSet<_>>()
    );
    // A reward model first, from the champion on the same pairs…
    let judge = quark.wait(EventKind::ModelTrained, |e| {
        of_kind(std::slice::from_ref(e), RunKind::Reward).pop()
    });
    assert_eq!(judge.parent_model_id, Some(first));
    assert_eq!(judge.dataset_ids, request.dataset_ids);
    assert_eq!(judge.metrics["train_pairs"], PREFERENCES.len() as f64);
    let policy = quark.wait(EventKind::ModelTrained, |e| {
        aligned(std::slice::from_ref(e)).pop()
    });
    assert_eq!(policy.parent_model_id, Some(first));
    assert_eq!(policy.dataset_ids, request.dataset_ids);
    assert_eq!(policy.header.causation_id, Some(request.header.event_id));
    assert_eq!(policy.hyperparameters["beta"], "0.1");
    let m = &policy.metrics;
    // It learnt its pairs: the preferred answers now beat the served ones.
    assert!(
        m["train_rewards_accuracy"] >= 0.75 && m["train_rewards_margin"] > 0.0,
        "{m:?}"
    );
    assert_eq!(m["train_pairs"], PREFERENCES.len() as f64);

    // Evaluated against the champion and promoted.
    let (champion, reason) = quark.wait(EventKind::ModelPromoted, |e| {
        promoted(e).filter(|(id, _)| *id == policy.model_id)
    });
    assert_eq!(reason, PromotionReason::GatePassed, "{}", quark.log());
    // …by which the gate read the policy's answers against the champion's; the reward model
    // itself is no candidate.
    let verdict = quark.wait(EventKind::EvalCompleted, |e| match e {
        Event::EvalCompleted(c) if c.model_id == policy.model_id => Some(c.clone()),
        _ => None,
    });
    let check = verdict
        .checks
        .iter()
        .find(|c| c.metric == "reward_win_rate")
        .unwrap_or_else(|| panic!("no reward-model check: {:?}", verdict.checks));
    assert!(check.passed && check.candidate >= 0.4, "{check:?}");
    assert!(verdict.metrics["reward_win_prompts"] >= 1.0);
    let evaluated: HashSet<Id> = quark
        .events(EventKind::EvalCompleted)
        .iter()
        .chain(&quark.events(EventKind::EvalRegressed))
        .filter_map(|e| match e {
            Event::EvalCompleted(c) => Some(c.model_id),
            Event::EvalRegressed(r) => Some(r.model_id),
            _ => None,
        })
        .collect();
    assert!(!evaluated.contains(&judge.model_id));

    // The prompts served (the questions rated among them) optimise the champion against the
    // reward model (RLOO, a ppo run), and that policy goes through the gate too.
    let optimise = quark.wait(EventKind::RetrainRequested, |e| match e {
        Event::RetrainRequested(r) if r.run_kind == RunKind::Ppo => Some(r.clone()),
        _ => None,
    });
    let prompts = dataset_of(&quark, optimise.dataset_ids[0]);
    assert_eq!(prompts.kind, DatasetKind::Prompts);
    let served = prompts_of(&quark, &prompts);
    for (question, _) in PREFERENCES {
        assert!(served.contains(*question), "{question} not in {served:?}");
    }
    let optimised = quark.wait(EventKind::ModelTrained, |e| {
        of_kind(std::slice::from_ref(e), RunKind::Ppo).pop()
    });
    assert!(
        [first, policy.model_id].contains(&optimised.parent_model_id.unwrap()),
        "optimised from a champion"
    );
    assert_eq!(optimised.dataset_ids, optimise.dataset_ids);
    assert_eq!(optimised.steps, 10);
    let h = &optimised.hyperparameters;
    assert_eq!(
        (h["rloo_samples"].as_str(), h["beta"].as_str()),
        ("4", "0.05")
    );
    let m = &optimised.metrics;
    for stat in ["rloo_reward", "rloo_kl", "rloo_score"] {
        assert!(m[stat].is_finite(), "{m:?}");
    }
    assert!((m["rloo_score"] - (m["rloo_reward"] - 0.05 * m["rloo_kl"])).abs() < 1e-3);
    let measured = gate_metrics(&quark, optimised.model_id);
    assert!(measured["perplexity"].is_finite(), "{measured:?}");
    // The gateway serves the newest champion: the aligned one, or the optimised one after it.
    // (By when it happened: promotions of different lineages lie on different partitions.)
    let newest = || {
        let promotions = quark.events(EventKind::ModelPromoted);
        promotions
            .into_iter()
            .filter_map(|e| match e {
                Event::ModelPromoted(p) if p.alias == Alias::Champion => Some(p),
                _ => None,
            })
            .max_by_key(|p| p.header.occurred_at)
            .map(|p| p.model_id)
    };
    assert!([Some(champion), Some(optimised.model_id)].contains(&newest()));
    wait_for(
        "the gateway to serve the newest champion",
        Duration::from_secs(60),
        || quark.served_model() == newest().map(|id| id.to_string()),
    );

    // Redelivery: the same feedback and the same request again train nothing; a new request
    // for the same pairs on the same base finds them learnt.
    let mut again: Vec<Event> = quark
        .events(EventKind::FeedbackReceived)
        .into_iter()
        .filter(|e| matches!(e, Event::FeedbackReceived(f) if feedback_ids.contains(&f.feedback_id.to_string())))
        .collect();
    assert_eq!(again.len(), PREFERENCES.len());
    again.push(Event::RetrainRequested(request.clone()));
    let mut anew = request.clone();
    anew.header = EventHeader::caused_by(&request.header, "probe", "again");
    anew.request_id = Id::random();
    anew.base_model_id = Some(first);
    again.push(Event::RetrainRequested(anew.clone()));
    publish(&quark, &again);
    // The new request shares the redelivered one's correlation, so its partition: it is
    // handled after it, and finds every pair learnt by DPO on this base (the ledger is the
    // lineage folded from the topics).
    wait_for(
        "the trainer to find the pairs learnt",
        Duration::from_secs(120),
        || {
            logged(
                &quark,
                "every pair named was learnt by this kind of run on this base already: nothing to train",
                &[("request", &anew.header.event_id.to_string())],
            )
        },
    );
    // The augmenter has read the redelivered feedback too: its lag on the topic is 0.
    let total = (2 * PREFERENCES.len()).to_string();
    wait_for(
        "the augmenter to read the redelivered feedback",
        Duration::from_secs(60),
        || {
            let out = quark.command(&["topics"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.starts_with(&["feedback.received", &total]) && l.contains("augmenter=0")
            })
        },
    );
    let ids: HashSet<Id> = aligned(&quark.events(EventKind::ModelTrained))
        .iter()
        .map(|m| m.model_id)
        .collect();
    assert_eq!(
        ids,
        HashSet::from([policy.model_id]),
        "one policy, trained once"
    );
    assert_eq!(
        of_kind(&quark.events(EventKind::ModelTrained), RunKind::Reward).len(),
        1,
        "one reward model, trained once"
    );
    // The augmenter's one request (published again above, same id) is all there is.
    let requests: HashSet<Id> = quark
        .events(EventKind::RetrainRequested)
        .iter()
        .filter_map(|e| match e {
            Event::RetrainRequested(r)
                if r.run_kind == RunKind::Dpo && r.header.producer == "augmenter" =>
            {
                Some(r.header.event_id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        requests,
        HashSet::from([request.header.event_id]),
        "the redelivered feedback released nothing"
    );

    // Bad input: an identical pair, and a reward model with no pairs.
    let (same, dpo) = job_on(
        &quark,
        &[r#"{"prompt": "p", "chosen": "same", "rejected": "same"}"#],
        RunKind::Dpo,
    );
    let (empty, reward) = job_on(&quark, &[], RunKind::Reward);
    publish(
        &quark,
        &[
            Event::DatasetPrepared(same),
            Event::DatasetPrepared(empty),
            dpo,
            reward,
        ],
    );
    let topic = dlq_topic(EventKind::RetrainRequested.topic());
    wait_for(
        "both jobs in the dead-letter topic",
        Duration::from_secs(180),
        || {
            quark_events::bus::inspect(&quark.broker.bus())
                .unwrap()
                .iter()
                .any(|t| t.topic == topic && t.messages() >= 2)
        },
    );
    let dead = read_topic(&quark.broker.bus(), &topic, 2);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| header(m, headers::ERROR).unwrap_or_default())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].contains("hold none") && reasons[1].contains("the same"),
        "{reasons:?}"
    );
}

fn header(message: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    message
        .headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| String::from_utf8(h.value?.to_vec()).ok())
}
