//! Trainings the augmenter asked for and has not seen answered.
//!
//! Feedback can arrive faster than the trainer fine-tunes on it. Were every threshold crossed
//! a new retrain.requested, the requests would queue behind the trainer without end. Instead,
//! while a training released by the threshold is in flight, the corrections and preference
//! pairs that would start another stay pending; the answering model.trained releases them
//! together, as one training. So there is at most one such training at a time, and nothing
//! waits longer than one job.
//!
//! The augmenter learns of its requests by reading them back from the bus, and of their
//! answers by the model.trained they cause. Both are events, so a replay decides the same.
//! A request not answered within `training_timeout_secs` (of event time: the trainer may have
//! refused it to the dead-letter topic) holds nothing back any more.

use quark_events::{EventHeader, Id, ModelTrained, RetrainRequested};
use quark_runtime::db::insert_new;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, DatabaseTransaction};

pub mod request {
    use sea_orm::entity::prelude::*;

    /// A retrain.requested the augmenter released, until its model.trained arrives.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "augmenter_trainings")]
    pub struct Model {
        /// The request's event id: its model.trained names it as its cause.
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub requested_at: i64,
        pub answered: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Whether `request` is one the augmenter released (it names datasets; a request to the
/// policy names none).
pub fn is_released(request: &RetrainRequested) -> bool {
    request.header.producer == crate::NAME && !request.dataset_ids.is_empty()
}

/// Keeps a released request as in flight (once, however often it is read).
pub async fn record_request(
    txn: &DatabaseTransaction,
    request: &RetrainRequested,
) -> Result<(), DbErr> {
    let row = request::ActiveModel {
        event_id: Set(request.header.event_id.to_string()),
        requested_at: Set(request.header.occurred_at.0),
        answered: Set(false),
    };
    insert_new(txn, row, [request::Column::EventId]).await
}

/// The in-flight request `trained` answers, if any.
pub async fn answered_by<C: ConnectionTrait>(
    db: &C,
    trained: &ModelTrained,
) -> Result<Option<Id>, DbErr> {
    let Some(cause) = trained.header.causation_id else {
        return Ok(None);
    };
    let row = request::Entity::find_by_id(cause.to_string())
        .filter(request::Column::Answered.eq(false))
        .one(db)
        .await?;
    Ok(row.map(|_| cause))
}

/// Marks the request `trained` answers, if it is one, as answered.
pub async fn record_answer(txn: &DatabaseTransaction, trained: &ModelTrained) -> Result<(), DbErr> {
    if let Some(cause) = trained.header.causation_id {
        request::Entity::update_many()
            .col_expr(request::Column::Answered, Expr::value(true))
            .filter(request::Column::EventId.eq(cause.to_string()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Whether a released training is in flight at `now`'s time: one unanswered, requested
/// within `timeout_secs`, other than `answered_now` (the one the event being decided answers).
pub async fn in_flight<C: ConnectionTrait>(
    db: &C,
    now: &EventHeader,
    timeout_secs: u64,
    answered_now: Option<Id>,
) -> Result<bool, DbErr> {
    let since = now.occurred_at.0 - (timeout_secs as i64).saturating_mul(1000);
    let mut waiting = request::Entity::find()
        .filter(request::Column::Answered.eq(false))
        .filter(request::Column::RequestedAt.gte(since));
    if let Some(id) = answered_now {
        waiting = waiting.filter(request::Column::EventId.ne(id.to_string()));
    }
    Ok(waiting.count(db).await? > 0)
}
