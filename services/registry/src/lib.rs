//! The model registry: projections of the topics into the database (models, aliases,
//! datasets, tokenizers, evaluations, promotions, feedback counts) and the decisions that
//! move the champion.
//!
//! - eval.completed (every gate check passed) → model.promoted: the model becomes champion and
//!   the champion it replaces becomes `previous`.
//! - eval.regressed for the live champion, or telemetry.reported showing the champion failing
//!   live → model.promoted with reason `rollback`: `previous` becomes champion again.
//!
//! - promotion.requested (by hand) → model.promoted with the operator and the note, or the
//!   request dead-lettered with why it cannot be carried out (see [`manual`]).
//!
//! - document.forgotten → every model that learnt from the document is flagged (see
//!   [`forgotten`]), and, if the policy says so and the champion is one, retrain.requested for
//!   a full retrain without it.
//!
//! A decision is a pure function of the event and the projection, recorded by [`Handler::apply`]
//! in the same transaction as the projection, with the promotion's id and time taken from its
//! cause. So `quark replay`, which folds the topics back into empty tables, rebuilds exactly
//! what live consumption built.

mod decide;
mod forgotten;
mod manual;
mod rebuild;
pub mod tables;

use async_trait::async_trait;
pub use decide::{carry_model, decide};
pub use forgotten::forgotten;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{
    Alias, DatasetKind, DatasetPrepared, Event, EventHeader, EventKind, Id, ModelPromoted,
    ModelTrained, TokenizerTrained,
};
pub use quark_runtime::config::RegistrySettings;
pub use rebuild::{rebuild, snapshot};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QueryOrder,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
pub use tables::{ForgottenMigration, OperatorMigration, RegistryMigration};
use tables::{alias, dataset, evaluation, feedback, model, promotion, tokenizer};

pub const NAME: &str = "registry";

pub struct RegistryService {
    db: DatabaseConnection,
    policy: RegistrySettings,
}

impl RegistryService {
    pub fn new(db: DatabaseConnection, policy: RegistrySettings) -> Self {
        RegistryService { db, policy }
    }
}

#[async_trait]
impl Handler for RegistryService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        use EventKind::*;
        vec![
            DatasetPrepared,
            TokenizerTrained,
            ModelTrained,
            EvalCompleted,
            EvalRegressed,
            ModelPromoted,
            FeedbackReceived,
            TelemetryReported,
            DocumentForgotten,
            PromotionRequested,
        ]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        // A request that cannot be carried out goes to the dead-letter topic, with why.
        if let Event::PromotionRequested(r) = event {
            let answer = manual::requested(&self.db, r).await;
            if let Err(refused) = answer.map_err(HandlerError::transient)? {
                return Err(HandlerError::Permanent(refused));
            }
        }
        let decision = decide(&self.db, event, &self.policy)
            .await
            .map_err(HandlerError::transient)?;
        let mut events: Vec<Event> = decision.into_iter().map(Event::ModelPromoted).collect();
        if let Event::DocumentForgotten(f) = event {
            let retrain = forgotten::retrain(&self.db, f, &self.policy)
                .await
                .map_err(HandlerError::transient)?;
            events.extend(retrain.map(Event::RetrainRequested));
        }
        Ok(events)
    }

    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        project(txn, event, &self.policy).await
    }
}

/// An event as JSON with every object's keys sorted: maps in events have no order, and a
/// projection rebuilt by replay must be byte-for-byte the one built live.
fn json<T: Serialize>(value: &T) -> String {
    fn sort(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.sort_keys();
                map.values_mut().for_each(sort);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(sort),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(value).expect("events serialise to JSON");
    sort(&mut value);
    value.to_string()
}

fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Folds one event into the projection and records the alias moves it calls for: what the
/// live registry does with each event it consumes.
pub async fn project<C: ConnectionTrait>(
    db: &C,
    event: &Event,
    policy: &RegistrySettings,
) -> Result<(), DbErr> {
    let decision = decide(db, event, policy).await?;
    fold(db, event).await?;
    for promotion in &decision {
        record_promotion(db, promotion).await?;
    }
    Ok(())
}

/// Folds one event into the projection. Decides nothing: a replay takes the registry's
/// decisions from the model.promoted events it made, rather than making them again from a
/// state that may not be the one it made them in.
pub async fn fold<C: ConnectionTrait>(db: &C, event: &Event) -> Result<(), DbErr> {
    match event {
        Event::DatasetPrepared(d) => {
            insert_new(
                db,
                dataset::ActiveModel {
                    dataset_id: Set(d.dataset_id.to_string()),
                    kind: Set(label(&d.kind)),
                    prepared_at: Set(d.header.occurred_at.0),
                    event: Set(json(d)),
                },
                [dataset::Column::DatasetId],
            )
            .await?
        }
        Event::TokenizerTrained(t) => {
            insert_new(
                db,
                tokenizer::ActiveModel {
                    tokenizer_id: Set(t.tokenizer_id.to_string()),
                    dataset_id: Set(t.dataset_id.to_string()),
                    event: Set(json(t)),
                },
                [tokenizer::Column::TokenizerId],
            )
            .await?
        }
        Event::ModelTrained(m) => {
            insert_new(
                db,
                model::ActiveModel {
                    model_id: Set(m.model_id.to_string()),
                    run_kind: Set(label(&m.run_kind)),
                    parent_model_id: Set(m.parent_model_id.map(|p| p.to_string())),
                    trained_at: Set(m.header.occurred_at.0),
                    event: Set(json(m)),
                },
                [model::Column::ModelId],
            )
            .await?;
            forgotten::inherit(db, m).await?;
        }
        Event::DocumentForgotten(f) => forgotten::flag(db, f).await?,
        Event::EvalCompleted(e) => {
            record_evaluation(
                db,
                &e.header,
                e.evaluation_id,
                e.model_id,
                true,
                &label(
                    &e.source
                        .unwrap_or(quark_events::RegressionSource::OfflineGate),
                ),
                json(e),
            )
            .await?;
        }
        Event::EvalRegressed(e) => {
            record_evaluation(
                db,
                &e.header,
                e.evaluation_id,
                e.model_id,
                false,
                &label(&e.source),
                json(e),
            )
            .await?;
        }
        Event::ModelPromoted(p) => record_promotion(db, p).await?,
        Event::FeedbackReceived(f) => {
            count(
                db,
                &f.model_id,
                [
                    (feedback::Column::Feedback, 1),
                    (feedback::Column::Negative, i64::from(f.is_negative())),
                    (
                        feedback::Column::Corrections,
                        i64::from(f.correction.is_some()),
                    ),
                    (
                        feedback::Column::Preferences,
                        i64::from(f.preferred_response.is_some()),
                    ),
                ],
            )
            .await?
        }
        Event::TelemetryReported(t) => {
            count(
                db,
                &t.model_id.to_string(),
                [
                    (feedback::Column::Requests, t.requests),
                    (feedback::Column::Errors, t.errors),
                ],
            )
            .await?
        }
        _ => {}
    }
    Ok(())
}

pub(crate) use quark_runtime::db::insert_new;

async fn record_evaluation<C: ConnectionTrait>(
    db: &C,
    header: &EventHeader,
    evaluation_id: Id,
    model_id: Id,
    passed: bool,
    source: &str,
    event: String,
) -> Result<(), DbErr> {
    insert_new(
        db,
        evaluation::ActiveModel {
            evaluation_id: Set(evaluation_id.to_string()),
            model_id: Set(model_id.to_string()),
            passed: Set(passed),
            source: Set(source.to_string()),
            evaluated_at: Set(header.occurred_at.0),
            event: Set(event),
        },
        [evaluation::Column::EvaluationId],
    )
    .await
    .map(drop)
}

async fn count<C: ConnectionTrait, const N: usize>(
    db: &C,
    model_id: &str,
    increments: [(feedback::Column, i64); N],
) -> Result<(), DbErr> {
    let zero = feedback::ActiveModel {
        model_id: Set(model_id.to_string()),
        feedback: Set(0),
        negative: Set(0),
        corrections: Set(0),
        preferences: Set(0),
        requests: Set(0),
        errors: Set(0),
    };
    insert_new(db, zero, [feedback::Column::ModelId]).await?;
    let mut update = feedback::Entity::update_many().filter(feedback::Column::ModelId.eq(model_id));
    for (column, by) in increments {
        update = update.col_expr(
            column,
            sea_orm::sea_query::ExprTrait::add(Expr::col(column), by),
        );
    }
    update.exec(db).await.map(drop)
}

/// Points alias `which` (a label or a named alias's name) at `model_id`.
async fn set_alias<C: ConnectionTrait>(
    db: &C,
    which: &str,
    model_id: Id,
    since: i64,
) -> Result<(), DbErr> {
    alias::Entity::insert(alias::ActiveModel {
        alias: Set(which.to_string()),
        model_id: Set(model_id.to_string()),
        since: Set(since),
    })
    .on_conflict(
        OnConflict::column(alias::Column::Alias)
            .update_columns([alias::Column::ModelId, alias::Column::Since])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await
    .map(drop)
}

/// Records a promotion once, and moves the aliases it implies.
async fn record_promotion<C: ConnectionTrait>(db: &C, p: &ModelPromoted) -> Result<(), DbErr> {
    let event_id = p.header.event_id.to_string();
    if promotion::Entity::find_by_id(event_id.clone())
        .one(db)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let at = p.header.occurred_at.0;
    let previous = decide::previous_after(db, p).await?;
    promotion::Entity::insert(promotion::ActiveModel {
        event_id: Set(event_id),
        model_id: Set(p.model_id.to_string()),
        alias: Set(p.alias_key()),
        previous_model_id: Set(p.previous_model_id.map(|id| id.to_string())),
        reason: Set(label(&p.reason)),
        evaluation_id: Set(p.evaluation_id.map(|id| id.to_string())),
        promoted_at: Set(at),
        operator: Set(p.operator.clone()),
        note: Set(p.note.clone()),
    })
    .exec_without_returning(db)
    .await?;
    set_alias(db, &p.alias_key(), p.model_id, at).await?;
    if p.alias == Alias::Champion {
        match previous {
            Some(previous) => set_alias(db, Alias::Previous.label(), previous, at).await?,
            None => {
                alias::Entity::delete_by_id(label(&Alias::Previous))
                    .exec(db)
                    .await?;
            }
        }
        if alias_of(db, Alias::Challenger).await? == Some(p.model_id) {
            alias::Entity::delete_by_id(label(&Alias::Challenger))
                .exec(db)
                .await?;
        }
    }
    Ok(())
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, DbErr> {
    serde_json::from_str(text).map_err(|e| DbErr::Json(e.to_string()))
}

/// The model an alias points to.
pub async fn alias_of<C: ConnectionTrait>(db: &C, which: Alias) -> Result<Option<Id>, DbErr> {
    Ok(alias::Entity::find_by_id(label(&which))
        .one(db)
        .await?
        .and_then(|row| row.model_id.parse().ok()))
}

/// Every alias (built-in and named) and the model it points to, by name.
pub async fn aliases<C: ConnectionTrait>(db: &C) -> Result<Vec<(String, Id)>, DbErr> {
    Ok(alias::Entity::find()
        .order_by_asc(alias::Column::Alias)
        .all(db)
        .await?
        .into_iter()
        .filter_map(|row| Some((row.alias, row.model_id.parse().ok()?)))
        .collect())
}

pub async fn model<C: ConnectionTrait>(db: &C, id: Id) -> Result<Option<ModelTrained>, DbErr> {
    model::Entity::find_by_id(id.to_string())
        .one(db)
        .await?
        .map(|row| parse(&row.event))
        .transpose()
}

/// Every model, oldest first.
pub async fn models<C: ConnectionTrait>(db: &C) -> Result<Vec<ModelTrained>, DbErr> {
    model::Entity::find()
        .order_by_asc(model::Column::TrainedAt)
        .order_by_asc(model::Column::ModelId)
        .all(db)
        .await?
        .iter()
        .map(|row| parse(&row.event))
        .collect()
}

pub async fn dataset<C: ConnectionTrait>(db: &C, id: Id) -> Result<Option<DatasetPrepared>, DbErr> {
    dataset::Entity::find_by_id(id.to_string())
        .one(db)
        .await?
        .map(|row| parse(&row.event))
        .transpose()
}

/// Every dataset of a kind, oldest first.
pub async fn datasets_of_kind<C: ConnectionTrait>(
    db: &C,
    kind: DatasetKind,
) -> Result<Vec<DatasetPrepared>, DbErr> {
    dataset::Entity::find()
        .filter(dataset::Column::Kind.eq(label(&kind)))
        .order_by_asc(dataset::Column::PreparedAt)
        .order_by_asc(dataset::Column::DatasetId)
        .all(db)
        .await?
        .iter()
        .map(|row| parse(&row.event))
        .collect()
}

pub async fn tokenizer<C: ConnectionTrait>(
    db: &C,
    id: Id,
) -> Result<Option<TokenizerTrained>, DbErr> {
    tokenizer::Entity::find_by_id(id.to_string())
        .one(db)
        .await?
        .map(|row| parse(&row.event))
        .transpose()
}

/// The tokenizer trained on a dataset.
pub async fn tokenizer_for<C: ConnectionTrait>(
    db: &C,
    dataset_id: Id,
) -> Result<Option<TokenizerTrained>, DbErr> {
    tokenizer::Entity::find()
        .filter(tokenizer::Column::DatasetId.eq(dataset_id.to_string()))
        .one(db)
        .await?
        .map(|row| parse(&row.event))
        .transpose()
}

/// Every promotion, in the order they took effect.
pub async fn promotions<C: ConnectionTrait>(db: &C) -> Result<Vec<promotion::Model>, DbErr> {
    promotion::Entity::find()
        .order_by_asc(promotion::Column::PromotedAt)
        .order_by_asc(promotion::Column::EventId)
        .all(db)
        .await
}

/// The promotion that made the champion of time `at_ms` (milliseconds since the epoch).
pub async fn champion_at<C: ConnectionTrait>(
    db: &C,
    at_ms: i64,
) -> Result<Option<promotion::Model>, DbErr> {
    promotion::Entity::find()
        .filter(promotion::Column::Alias.eq(label(&Alias::Champion)))
        .filter(promotion::Column::PromotedAt.lte(at_ms))
        .order_by_desc(promotion::Column::PromotedAt)
        .order_by_desc(promotion::Column::EventId)
        .one(db)
        .await
}

pub async fn evaluations<C: ConnectionTrait>(db: &C) -> Result<Vec<evaluation::Model>, DbErr> {
    evaluation::Entity::find()
        .order_by_asc(evaluation::Column::EvaluatedAt)
        .order_by_asc(evaluation::Column::EvaluationId)
        .all(db)
        .await
}
