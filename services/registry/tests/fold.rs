//! The registry's fold over real SQLite: promotions move the aliases, a regression of the live
//! champion and a live telemetry regression roll back, `champion_at` answers for any moment,
//! and a rebuild from the events (in any order) gives the same projection.

mod common;

use common::*;
use quark_events::*;
use quark_registry::{RegistrySettings, alias_of, champion_at, decide, project, rebuild, snapshot};
use quark_runtime::Settings;

fn telemetry(at: i64, model: Id, requests: i64, errors: i64) -> Event {
    Event::TelemetryReported(TelemetryReported {
        header: header(at),
        model_id: model,
        instance: "g".into(),
        window_start: Timestamp(at - 10),
        window_end: Timestamp(at),
        requests,
        errors,
        latency_p50_ms: 1.0,
        latency_p95_ms: 2.0,
        latency_p99_ms: 3.0,
        tokens_generated: 0,
        feedback: 0,
        negative_feedback: 0,
        blocked: 0,
        flagged: 0,
    })
}

#[tokio::test]
async fn promotions_rollbacks_and_the_champion_at_any_time_survive_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir, "live.db").await;
    let settings = Settings::default().registry;
    let a = trained(1_000, None);
    let b = trained(2_000, Some(a.model_id));
    let c = trained(3_000, Some(b.model_id));
    let d = trained(5_000, Some(b.model_id));
    let events = vec![
        Event::ModelTrained(a.clone()),
        passed(1_100, &a, true),
        Event::ModelTrained(b.clone()),
        passed(2_100, &b, true),
        Event::ModelTrained(c.clone()),
        passed(3_100, &c, false),
        // Healthy traffic, then a window failing half its requests.
        telemetry(4_000, b.model_id, 100, 1),
        telemetry(4_100, b.model_id, 100, 50),
        Event::ModelTrained(d.clone()),
        passed(5_100, &d, true),
    ];
    let all = live(&db, &events, &settings).await;
    let moves: Vec<(Alias, Id, PromotionReason)> = all
        .iter()
        .filter_map(|e| match e {
            Event::ModelPromoted(p) => Some((p.alias, p.model_id, p.reason)),
            _ => None,
        })
        .collect();
    use {Alias::*, PromotionReason::*};
    assert_eq!(
        moves,
        [
            (Challenger, a.model_id, Trained),
            (Champion, a.model_id, GatePassed),
            (Challenger, b.model_id, Trained),
            (Champion, b.model_id, GatePassed),
            (Previous, a.model_id, GatePassed),
            (Challenger, c.model_id, Trained),
            // Rolled back to a, nothing was champion before a: no previous any more.
            (Champion, a.model_id, Rollback),
            (Challenger, d.model_id, Trained),
            (Champion, d.model_id, GatePassed),
            (Previous, a.model_id, GatePassed),
        ],
        "every alias move is an event"
    );
    // c failed its gate: it stays the challenger until d is trained.
    let promotions: Vec<&ModelPromoted> = all
        .iter()
        .filter_map(|e| match e {
            Event::ModelPromoted(p) if p.alias == Alias::Champion => Some(p),
            _ => None,
        })
        .collect();
    let summary: Vec<(Id, PromotionReason)> =
        promotions.iter().map(|p| (p.model_id, p.reason)).collect();
    assert_eq!(
        summary,
        [
            (a.model_id, PromotionReason::GatePassed),
            (b.model_id, PromotionReason::GatePassed),
            (a.model_id, PromotionReason::Rollback),
            (d.model_id, PromotionReason::GatePassed),
        ],
        "c failed its gate and was never promoted; the failing window rolled b back to a"
    );
    assert_eq!(promotions[2].previous_model_id, Some(b.model_id));
    // Each promotion carries what its consumers need to use the model, rollbacks included.
    for (p, m) in promotions.iter().zip([&a, &b, &a, &d]) {
        assert_eq!(p.checkpoint.as_ref(), Some(&m.checkpoint));
        assert_eq!(p.tokenizer_id, Some(m.tokenizer_id));
        assert_eq!(p.parent_model_id, m.parent_model_id);
        assert_eq!(p.run_kind, Some(m.run_kind));
        assert_eq!(p.trained_at, Some(m.header.occurred_at));
    }
    assert_eq!(
        alias_of(&db, Alias::Champion).await.unwrap(),
        Some(d.model_id)
    );
    assert_eq!(
        alias_of(&db, Alias::Previous).await.unwrap(),
        Some(a.model_id)
    );

    let at = |t| {
        let db = &db;
        async move {
            champion_at(db, t)
                .await
                .unwrap()
                .map(|p| (p.model_id, p.reason))
        }
    };
    assert_eq!(at(999).await, None);
    assert_eq!(
        at(1_500).await,
        Some((a.model_id.to_string(), "gate_passed".into()))
    );
    assert_eq!(
        at(3_500).await,
        Some((b.model_id.to_string(), "gate_passed".into()))
    );
    assert_eq!(
        at(4_100).await,
        Some((a.model_id.to_string(), "rollback".into()))
    );
    assert_eq!(
        at(9_999).await,
        Some((d.model_id.to_string(), "gate_passed".into()))
    );

    // Replayed in another order (as partitions interleave), the projection is the same.
    let rebuilt = database(&dir, "rebuilt.db").await;
    let mut shuffled = all.clone();
    shuffled.reverse();
    assert_eq!(rebuild(&rebuilt, shuffled).await.unwrap(), all.len());
    assert_eq!(
        snapshot(&rebuilt).await.unwrap(),
        snapshot(&db).await.unwrap()
    );
    // Replaying into the live database itself (drop and rebuild) changes nothing either.
    let before = snapshot(&db).await.unwrap();
    rebuild(&db, all).await.unwrap();
    assert_eq!(snapshot(&db).await.unwrap(), before);
}

/// A registry consumes its topics in the order their partitions deliver, not the order the
/// events happened (a restart catches up topic by topic). Its decisions follow the order it
/// made them in; a replay, which sorts by time, must fold them in that order too.
#[tokio::test]
async fn a_registry_that_consumed_events_out_of_their_order_rebuilds_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir, "live.db").await;
    let settings = Settings::default().registry;
    let (a, b) = (trained(1_000, None), trained(2_000, None));
    // b's gate passed before a's, but the registry read a's first.
    let consumed = vec![
        Event::ModelTrained(b.clone()),
        Event::ModelTrained(a.clone()),
        passed(3_000, &a, true),
        passed(2_500, &b, true),
    ];
    let all = live(&db, &consumed, &settings).await;
    let moves: Vec<(Alias, Id, Option<Id>)> = all
        .iter()
        .filter_map(|e| match e {
            Event::ModelPromoted(p) => Some((p.alias, p.model_id, p.previous_model_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        moves,
        [
            (Alias::Challenger, b.model_id, None),
            (Alias::Challenger, a.model_id, Some(b.model_id)),
            (Alias::Champion, a.model_id, None),
            (Alias::Champion, b.model_id, Some(a.model_id)),
            (Alias::Previous, a.model_id, None),
        ],
        "the moves in the order the registry made them"
    );
    let times: Vec<i64> = all
        .iter()
        .filter_map(|e| match e {
            Event::ModelPromoted(p) => Some(p.header.occurred_at.0),
            _ => None,
        })
        .collect();
    assert!(
        times.windows(2).all(|t| t[0] <= t[1]),
        "each decision is stamped no earlier than the one before it: {times:?}"
    );
    assert_eq!(
        alias_of(&db, Alias::Champion).await.unwrap(),
        Some(b.model_id)
    );

    let rebuilt = database(&dir, "rebuilt.db").await;
    rebuild(&rebuilt, all).await.unwrap();
    assert_eq!(
        snapshot(&rebuilt).await.unwrap(),
        snapshot(&db).await.unwrap()
    );
}

#[tokio::test]
async fn a_rollback_needs_a_previous_champion_and_enough_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir, "r.db").await;
    let settings = Settings::default().registry;
    let a = trained(1_000, None);
    live(
        &db,
        &[Event::ModelTrained(a.clone()), passed(1_100, &a, true)],
        &settings,
    )
    .await;
    // Failing traffic but nothing to roll back to; then too few requests to judge.
    assert!(
        decide(&db, &telemetry(2_000, a.model_id, 100, 90), &settings)
            .await
            .unwrap()
            .is_empty()
    );
    let b = trained(3_000, Some(a.model_id));
    live(
        &db,
        &[Event::ModelTrained(b.clone()), passed(3_100, &b, true)],
        &settings,
    )
    .await;
    assert!(
        decide(&db, &telemetry(4_000, b.model_id, 10, 9), &settings)
            .await
            .unwrap()
            .is_empty()
    );
    // Telemetry of a model that is not the champion is no reason to move it.
    assert!(
        decide(&db, &telemetry(4_000, a.model_id, 100, 90), &settings)
            .await
            .unwrap()
            .is_empty()
    );
    // An offline regression of the live champion rolls it back.
    let p = decide(&db, &passed(5_000, &b, false), &settings)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (p.model_id, p.reason, p.previous_model_id),
        (a.model_id, PromotionReason::Rollback, Some(b.model_id))
    );
}

fn prepared(at: i64, kind: DatasetKind) -> DatasetPrepared {
    let Event::DatasetPrepared(mut d) = samples::sample(EventKind::DatasetPrepared, "curator")
    else {
        unreachable!()
    };
    d.header = header(at);
    d.dataset_id = Id::random();
    d.kind = kind;
    d
}

fn forgotten(at: i64, document: &str, datasets: &[Id]) -> Event {
    Event::DocumentForgotten(DocumentForgotten {
        header: header(at),
        document_id: document.into(),
        dataset_ids: datasets.to_vec(),
    })
}

#[tokio::test]
async fn a_forgotten_document_flags_every_model_that_learnt_from_it_and_retrains_the_champion() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir, "live.db").await;
    let settings = Settings::default().registry;
    let (plays, notes, sft) = (
        prepared(100, DatasetKind::Pretrain),
        prepared(200, DatasetKind::Pretrain),
        prepared(300, DatasetKind::Sft),
    );
    let mut base = trained(1_000, None);
    base.run_kind = RunKind::Pretrain;
    base.dataset_ids = vec![plays.dataset_id];
    let mut tuned = trained(2_000, Some(base.model_id));
    tuned.dataset_ids = vec![sft.dataset_id];
    let mut other = trained(2_500, None);
    other.dataset_ids = vec![notes.dataset_id];
    let mut events: Vec<Event> = [plays.clone(), notes, sft]
        .into_iter()
        .map(Event::DatasetPrepared)
        .collect();
    events.extend([
        Event::ModelTrained(base.clone()),
        passed(1_100, &base, true),
        Event::ModelTrained(tuned.clone()),
        passed(2_100, &tuned, true),
        Event::ModelTrained(other.clone()),
    ]);
    let mut all = live(&db, &events, &settings).await;
    let registry = quark_registry::RegistryService::new(db.clone(), settings.clone());

    // The document was in the plays: the pre-trained model and its fine-tune learnt from it.
    let forget = forgotten(3_000, "hamlet.txt", &[plays.dataset_id]);
    let emitted = quark_events::bus::Handler::handle(&registry, &forget)
        .await
        .unwrap();
    all.extend(live(&db, &[forget], &settings).await);
    let flagged = |flags: Vec<quark_registry::tables::forgotten::Model>| -> Vec<(String, String)> {
        let mut pairs: Vec<_> = flags
            .into_iter()
            .map(|f| (f.model_id, f.document_id))
            .collect();
        pairs.sort();
        pairs
    };
    let mut expected = vec![
        (base.model_id.to_string(), "hamlet.txt".to_string()),
        (tuned.model_id.to_string(), "hamlet.txt".to_string()),
    ];
    expected.sort();
    assert_eq!(
        flagged(quark_registry::forgotten(&db).await.unwrap()),
        expected
    );

    // The champion (the fine-tune) learnt from it: a full retrain on the plays, from scratch.
    let [Event::RetrainRequested(retrain)] = emitted.as_slice() else {
        panic!("one retrain.requested: {emitted:?}")
    };
    assert_eq!(
        (
            retrain.run_kind,
            retrain.base_model_id,
            retrain.dataset_ids.clone()
        ),
        (RunKind::Pretrain, None, vec![plays.dataset_id])
    );
    let again = quark_events::bus::Handler::handle(&registry, &all[all.len() - 1]).await;
    assert_eq!(
        again.unwrap(),
        emitted,
        "a redelivery asks for the same retrain"
    );

    // A model fine-tuned from a flagged one later inherits the flag.
    let child = trained(4_000, Some(tuned.model_id));
    all.extend(live(&db, &[Event::ModelTrained(child.clone())], &settings).await);
    let flags = quark_registry::forgotten(&db).await.unwrap();
    assert!(
        flags
            .iter()
            .any(|f| f.model_id == child.model_id.to_string())
    );

    // A document no model learnt from flags nothing and retrains nothing; nor does one the
    // champion learnt from when the policy only flags.
    let unrelated = forgotten(5_000, "notes.txt", &[Id::random()]);
    assert!(
        quark_events::bus::Handler::handle(&registry, &unrelated)
            .await
            .unwrap()
            .is_empty()
    );
    let flag_only = RegistrySettings {
        retrain_forgotten_champion: false,
        ..settings.clone()
    };
    let quiet = quark_registry::RegistryService::new(db.clone(), flag_only);
    let forget_again = forgotten(5_100, "ophelia.txt", &[plays.dataset_id]);
    assert!(
        quark_events::bus::Handler::handle(&quiet, &forget_again)
            .await
            .unwrap()
            .is_empty()
    );

    // The flags are part of the projection a replay rebuilds.
    all.extend(live(&db, &[unrelated], &settings).await);
    let rebuilt = database(&dir, "rebuilt.db").await;
    rebuild(&rebuilt, all).await.unwrap();
    assert_eq!(
        snapshot(&rebuilt).await.unwrap(),
        snapshot(&db).await.unwrap()
    );
}

#[tokio::test]
async fn a_shadow_traffic_report_promotes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir, "shadow.db").await;
    let settings = Settings::default().registry;
    let a = trained(1_000, None);
    let b = trained(2_000, Some(a.model_id));
    live(
        &db,
        &[
            Event::ModelTrained(a.clone()),
            passed(1_100, &a, true),
            Event::ModelTrained(b.clone()),
        ],
        &settings,
    )
    .await;
    let Event::EvalCompleted(mut report) = passed(2_100, &b, true) else {
        unreachable!()
    };
    report.source = Some(RegressionSource::ShadowTraffic);
    let report = Event::EvalCompleted(report);
    assert!(decide(&db, &report, &settings).await.unwrap().is_empty());
    project(&db, &report, &settings).await.unwrap();
    assert_eq!(
        alias_of(&db, Alias::Champion).await.unwrap(),
        Some(a.model_id)
    );
    assert_eq!(
        alias_of(&db, Alias::Challenger).await.unwrap(),
        Some(b.model_id)
    );
}
