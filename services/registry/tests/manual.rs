//! Alias moves asked for by hand (promotion.requested) over real SQLite: a rollback, a model
//! promoted to champion and to a named alias, each carrying who asked and why into the
//! promotion (and `champion_at`); requests that cannot be carried out are refused with why,
//! for the dead-letter topic; a rebuild from the events gives the same projection.

mod common;

use common::*;
use quark_events::bus::{Handler, HandlerError};
use quark_events::*;
use quark_registry::{RegistryService, alias_of, champion_at, rebuild, snapshot};
use quark_runtime::Settings;

fn asked(at: i64, action: PromotionAction, model_id: Option<Id>, alias: Option<&str>) -> Event {
    Event::PromotionRequested(PromotionRequested {
        header: header(at),
        action,
        model_id,
        alias_name: alias.map(str::to_string),
        operator: "ops".into(),
        reason: Some(format!("asked at {at}")),
    })
}

/// An alias move: the alias, the model, why, who asked and what they said.
type Moved<'a> = (
    String,
    Id,
    PromotionReason,
    Option<&'a str>,
    Option<&'a str>,
);

#[tokio::test]
async fn operators_move_aliases_through_the_registry_with_who_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir, "live.db").await;
    let settings = Settings::default().registry;
    let (a, b) = (trained(1_000, None), trained(2_000, None));
    let b = ModelTrained {
        parent_model_id: Some(a.model_id),
        ..b
    };
    let mut events = vec![
        Event::ModelTrained(a.clone()),
        passed(1_100, &a, true),
        Event::ModelTrained(b.clone()),
        passed(2_100, &b, true),
    ];
    use PromotionAction::{Promote, Rollback as Back};
    events.push(asked(3_000, Back, None, None));
    let mut log = live(&db, &events, &settings).await;
    // a was the first champion: a second rollback has nowhere to go.
    let service = RegistryService::new(db.clone(), settings.clone());
    match service.handle(&asked(3_100, Back, None, None)).await {
        Err(HandlerError::Permanent(e)) => assert!(e.contains("nothing to roll back to"), "{e}"),
        other => panic!("{other:?}"),
    }
    let more = [
        asked(3_200, Promote, Some(b.model_id), None),
        asked(3_300, Promote, Some(a.model_id), Some("legal")),
    ];
    log.extend(live(&db, &more, &settings).await);
    let by_hand: Vec<Moved> = log
        .iter()
        .filter_map(|e| match e {
            Event::ModelPromoted(p) if p.operator.is_some() => Some((
                p.alias_key(),
                p.model_id,
                p.reason,
                p.operator.as_deref(),
                p.note.as_deref(),
            )),
            _ => None,
        })
        .collect();
    use PromotionReason::{Manual, Rollback};
    let why = |at| Some(format!("asked at {at}"));
    let (w1, w2, w3) = (why(3_000), why(3_200), why(3_300));
    assert_eq!(
        by_hand,
        [
            // Rolled back to a; nothing was champion before a: no previous any more.
            (
                "champion".into(),
                a.model_id,
                Rollback,
                Some("ops"),
                w1.as_deref()
            ),
            (
                "champion".into(),
                b.model_id,
                Manual,
                Some("ops"),
                w2.as_deref()
            ),
            (
                "previous".into(),
                a.model_id,
                Manual,
                Some("ops"),
                w2.as_deref()
            ),
            (
                "legal".into(),
                a.model_id,
                Manual,
                Some("ops"),
                w3.as_deref()
            ),
        ]
    );
    assert_eq!(
        alias_of(&db, Alias::Champion).await.unwrap(),
        Some(b.model_id)
    );
    let at = champion_at(&db, 3_100).await.unwrap().unwrap();
    assert_eq!(
        (at.model_id, at.reason.as_str()),
        (a.model_id.to_string(), "rollback")
    );
    assert_eq!(
        (at.operator.as_deref(), at.note.as_deref()),
        (Some("ops"), w1.as_deref())
    );

    // What cannot be carried out is refused, with why, and moves nothing.
    let unknown = Id::random();
    let reward = ModelTrained {
        run_kind: RunKind::Reward,
        ..trained(4_000, Some(b.model_id))
    };
    log.extend(live(&db, &[Event::ModelTrained(reward.clone())], &settings).await);
    for (request, why) in [
        (
            asked(5_000, Promote, Some(unknown), None),
            format!("the registry knows no model {unknown}"),
        ),
        (
            asked(5_000, Promote, Some(b.model_id), None),
            "is the champion already".into(),
        ),
        (
            asked(5_000, Promote, Some(reward.model_id), None),
            "is a reward model".into(),
        ),
        (
            asked(5_000, Promote, Some(a.model_id), Some("champion")),
            "an alias name is".into(),
        ),
        (
            asked(5_000, Promote, None, None),
            "names the model to promote".into(),
        ),
    ] {
        match service.handle(&request).await {
            Err(HandlerError::Permanent(e)) => assert!(e.contains(&why), "{e}"),
            other => panic!("{request:?} → {other:?}"),
        }
    }
    // Replayed, the projection (operators and notes included) is the same.
    let rebuilt = database(&dir, "rebuilt.db").await;
    rebuild(&rebuilt, log).await.unwrap();
    assert_eq!(
        snapshot(&rebuilt).await.unwrap(),
        snapshot(&db).await.unwrap()
    );
}
