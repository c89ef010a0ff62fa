//! The alias moves an event calls for, given the registry as it stands. Every move is a
//! model.promoted that carries the model, so a consumer (the gateway) follows every alias from
//! events alone:
//!
//! - model.trained (a model that answers prompts) → it becomes the challenger;
//! - eval.completed, every check passed → the model becomes champion, and the champion it
//!   replaces becomes `previous`;
//! - eval.regressed or failing live telemetry for the champion → `previous` becomes champion
//!   again (a rollback), and `previous` moves to the model before it.

use crate::{NAME, RegistrySettings, alias_of, label, model, tables::promotion, tokenizer};
use quark_events::{
    Alias, Event, EventHeader, Id, ModelPromoted, ModelTrained, PromotionReason, Timestamp,
};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

/// A move of `alias` to `model_id`, caused by `cause`; its id is derived from the cause and
/// the alias, so a cause handled again after a crash moves nothing twice.
///
/// It is stamped with the cause's time, or just after the registry's latest move when that is
/// later: the registry reads its topics in the order their partitions deliver, not the order
/// events happened, and its moves depend on the moves before them. Stamped this way they sort
/// in the order it made them, which is the order a replay folds them in.
pub(crate) async fn moved<C: ConnectionTrait>(
    db: &C,
    cause: &EventHeader,
    alias: Alias,
    model_id: Id,
    reason: PromotionReason,
) -> Result<ModelPromoted, DbErr> {
    // The champion's slot is the one its promotions have always had: ids stay stable on replay.
    let slot = match alias {
        Alias::Champion => "promotion".to_string(),
        other => format!("promotion/{}", other.label()),
    };
    let latest = promotion::Entity::find()
        .order_by_desc(promotion::Column::PromotedAt)
        .one(db)
        .await?
        .map_or(i64::MIN, |p| p.promoted_at + 1);
    let mut header = EventHeader::caused_by(cause, NAME, &slot);
    header.occurred_at = Timestamp(cause.occurred_at.0.max(latest));
    Ok(ModelPromoted::moving(header, alias, model_id, reason))
}

/// The alias moves `event` calls for: none, a new challenger, or a new champion with the
/// `previous` it implies.
pub async fn decide<C: ConnectionTrait>(
    db: &C,
    event: &Event,
    policy: &RegistrySettings,
) -> Result<Vec<ModelPromoted>, DbErr> {
    if let Event::ModelTrained(m) = event {
        return challenger(db, m).await;
    }
    if let Event::PromotionRequested(r) = event {
        return Ok(crate::manual::requested(db, r).await?.unwrap_or_default());
    }
    let champion = alias_of(db, Alias::Champion).await?;
    let decision = match event {
        Event::EvalCompleted(e) if e.is_gate() && e.checks.iter().all(|c| c.passed) => {
            if champion == Some(e.model_id) || model(db, e.model_id).await?.is_none() {
                None
            } else {
                Some((
                    &e.header,
                    e.model_id,
                    PromotionReason::GatePassed,
                    Some(e.evaluation_id),
                ))
            }
        }
        Event::EvalRegressed(e) if champion == Some(e.model_id) => {
            alias_of(db, Alias::Previous).await?.map(|previous| {
                (
                    &e.header,
                    previous,
                    PromotionReason::Rollback,
                    Some(e.evaluation_id),
                )
            })
        }
        Event::TelemetryReported(t) if champion == Some(t.model_id) && failing(t, policy) => {
            alias_of(db, Alias::Previous)
                .await?
                .map(|previous| (&t.header, previous, PromotionReason::Rollback, None))
        }
        _ => None,
    };
    let Some((cause, model_id, reason, evaluation_id)) = decision else {
        return Ok(vec![]);
    };
    let mut moves = champion_moves(db, cause, model_id, reason, champion).await?;
    for p in &mut moves {
        p.evaluation_id = evaluation_id;
    }
    Ok(moves)
}

/// `model_id` becomes champion, replacing `champion`, and `previous` moves as that implies.
pub(crate) async fn champion_moves<C: ConnectionTrait>(
    db: &C,
    cause: &EventHeader,
    model_id: Id,
    reason: PromotionReason,
    champion: Option<Id>,
) -> Result<Vec<ModelPromoted>, DbErr> {
    let mut promoted = moved(db, cause, Alias::Champion, model_id, reason).await?;
    promoted.previous_model_id = champion;
    let mut moves = vec![carry_model(db, promoted.clone()).await?];
    if let Some(previous) = previous_after(db, &promoted).await? {
        let p = moved(db, cause, Alias::Previous, previous, reason).await?;
        moves.push(carry_model(db, p).await?);
    }
    Ok(moves)
}

fn failing(t: &quark_events::TelemetryReported, policy: &RegistrySettings) -> bool {
    let rate = |n: i64, of: i64| n as f64 / of.max(1) as f64;
    (t.requests >= policy.min_requests && rate(t.errors, t.requests) > policy.max_error_rate)
        || (t.feedback >= policy.min_feedback
            && rate(t.negative_feedback, t.feedback) > policy.max_negative_rate)
}

/// A newly trained model that answers prompts becomes the challenger (once: a redelivered
/// model.trained moves nothing).
async fn challenger<C: ConnectionTrait>(
    db: &C,
    m: &ModelTrained,
) -> Result<Vec<ModelPromoted>, DbErr> {
    if !m.run_kind.is_generative() || model(db, m.model_id).await?.is_some() {
        return Ok(vec![]);
    }
    let mut p = moved(
        db,
        &m.header,
        Alias::Challenger,
        m.model_id,
        PromotionReason::Trained,
    )
    .await?;
    p.previous_model_id = alias_of(db, Alias::Challenger).await?;
    Ok(vec![carry(db, p, m).await?])
}

/// What `previous` points at once champion promotion `p` takes effect: the champion it
/// replaces, or after a rollback, what preceded the restored champion (so a second rollback
/// goes further back instead of restoring the model just rolled back).
pub async fn previous_after<C: ConnectionTrait>(
    db: &C,
    p: &ModelPromoted,
) -> Result<Option<Id>, DbErr> {
    if p.reason != PromotionReason::Rollback {
        return Ok(p.previous_model_id);
    }
    Ok(promotion::Entity::find()
        .filter(promotion::Column::ModelId.eq(p.model_id.to_string()))
        .filter(promotion::Column::Alias.eq(label(&Alias::Champion)))
        .order_by_desc(promotion::Column::PromotedAt)
        .one(db)
        .await?
        .and_then(|earlier| earlier.previous_model_id)
        .and_then(|id| id.parse().ok()))
}

/// Fills in what consumers need to use the promoted model (its checkpoint, tokenizer and
/// lineage) from the projection, so that no other service has to read the registry's tables.
pub async fn carry_model<C: ConnectionTrait>(
    db: &C,
    p: ModelPromoted,
) -> Result<ModelPromoted, DbErr> {
    match model(db, p.model_id).await? {
        Some(m) => carry(db, p, &m).await,
        None => Ok(p),
    }
}

async fn carry<C: ConnectionTrait>(
    db: &C,
    mut p: ModelPromoted,
    m: &ModelTrained,
) -> Result<ModelPromoted, DbErr> {
    p.tokenizer = tokenizer(db, m.tokenizer_id).await?.map(|t| t.artifact);
    p.checkpoint = Some(m.checkpoint.clone());
    p.tokenizer_id = Some(m.tokenizer_id);
    p.run_kind = Some(m.run_kind);
    p.parent_model_id = m.parent_model_id;
    p.dataset_ids = Some(m.dataset_ids.clone());
    p.trained_at = Some(Timestamp(m.header.occurred_at.0));
    Ok(p)
}
