//! Feedback joined to the response it rates, from the log alone.
//!
//! The gateway that takes feedback need not have served the response: feedback.received
//! carries the request id, and response.served (from whichever gateway served it) carries the
//! prompt and the response. The augmenter folds every response.served into its own table and
//! completes feedback from it. Feedback whose response has not been folded yet is parked (its
//! event kept in a table of its own) and completed when the response arrives, in the same
//! transaction that folds the response: whichever of the two comes second does the join, once.
//! Feedback that carries its prompt and response itself (a third-party producer) needs no join.
//! Parked feedback for a response that never comes stays parked, listed by [`parked`] and
//! logged when it is parked.

use quark_events::{FeedbackReceived, ResponseServed};
use quark_runtime::db::insert_new;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, QueryOrder};

pub mod response {
    use sea_orm::entity::prelude::*;

    /// A served response (response.served), as feedback quotes it.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "augmenter_responses")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        pub model_id: String,
        #[sea_orm(column_type = "Text")]
        pub prompt: String,
        #[sea_orm(column_type = "Text")]
        pub response: String,
        pub served_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod parked {
    use sea_orm::entity::prelude::*;

    /// Feedback waiting for the response it rates.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "augmenter_parked_feedback")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        #[sea_orm(indexed)]
        pub request_id: String,
        pub received_at: i64,
        /// The feedback.received event, as JSON.
        #[sea_orm(column_type = "Text")]
        pub event: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Whether the feedback leaves its prompt and response to the join (what the gateway sends).
pub fn needs_join(feedback: &FeedbackReceived) -> bool {
    feedback.prompt.is_empty() && feedback.response.is_empty()
}

fn completed(mut feedback: FeedbackReceived, response: &response::Model) -> FeedbackReceived {
    feedback.prompt = response.prompt.clone();
    feedback.response = response.response.clone();
    feedback.model_id = response.model_id.clone();
    feedback
}

/// The feedback with its prompt and response; none while its response is not folded yet.
pub async fn complete<C: ConnectionTrait>(
    db: &C,
    feedback: &FeedbackReceived,
) -> Result<Option<FeedbackReceived>, DbErr> {
    if !needs_join(feedback) {
        return Ok(Some(feedback.clone()));
    }
    Ok(response::Entity::find_by_id(feedback.request_id.clone())
        .one(db)
        .await?
        .map(|response| completed(feedback.clone(), &response)))
}

fn row(served: &ResponseServed) -> response::Model {
    response::Model {
        request_id: served.request_id.clone(),
        model_id: served.model_id.to_string(),
        prompt: served.prompt.clone(),
        response: served.response.clone(),
        served_at: served.header.occurred_at.0,
    }
}

fn parse(row: &parked::Model) -> Result<FeedbackReceived, DbErr> {
    serde_json::from_str(&row.event).map_err(|e| DbErr::Json(e.to_string()))
}

/// The parked feedback a response completes, oldest first, completed.
pub async fn completed_by<C: ConnectionTrait>(
    db: &C,
    served: &ResponseServed,
) -> Result<Vec<FeedbackReceived>, DbErr> {
    let response = row(served);
    parked::Entity::find()
        .filter(parked::Column::RequestId.eq(served.request_id.clone()))
        .order_by_asc(parked::Column::ReceivedAt)
        .order_by_asc(parked::Column::EventId)
        .all(db)
        .await?
        .iter()
        .map(|p| Ok(completed(parse(p)?, &response)))
        .collect()
}

/// Every parked feedback, oldest first: feedback whose response has not arrived.
pub async fn parked<C: ConnectionTrait>(db: &C) -> Result<Vec<FeedbackReceived>, DbErr> {
    parked::Entity::find()
        .order_by_asc(parked::Column::ReceivedAt)
        .order_by_asc(parked::Column::EventId)
        .all(db)
        .await?
        .iter()
        .map(parse)
        .collect()
}

/// Folds a response and takes the feedback it completes off the parking.
pub(crate) async fn record_response<C: ConnectionTrait>(
    db: &C,
    served: &ResponseServed,
) -> Result<(), DbErr> {
    let r = row(served);
    let row = response::ActiveModel {
        request_id: Set(r.request_id),
        model_id: Set(r.model_id),
        prompt: Set(r.prompt),
        response: Set(r.response),
        served_at: Set(r.served_at),
    };
    insert_new(db, row, [response::Column::RequestId]).await?;
    parked::Entity::delete_many()
        .filter(parked::Column::RequestId.eq(served.request_id.clone()))
        .exec(db)
        .await?;
    Ok(())
}

pub(crate) async fn park<C: ConnectionTrait>(
    db: &C,
    feedback: &FeedbackReceived,
) -> Result<(), DbErr> {
    let event = serde_json::to_string(feedback).map_err(|e| DbErr::Json(e.to_string()))?;
    let row = parked::ActiveModel {
        event_id: Set(feedback.header.event_id.to_string()),
        request_id: Set(feedback.request_id.clone()),
        received_at: Set(feedback.header.occurred_at.0),
        event: Set(event),
    };
    insert_new(db, row, [parked::Column::EventId]).await
}

/// `first` (already scrubbed), then the most recent other distinct prompts served at or
/// before `until` (ms), newest first, PII scrubbed; at most `limit` in all: what a policy is
/// optimised on. Bounded by `until`, a redelivered release picks the same prompts.
pub async fn recent_prompts<C: ConnectionTrait>(
    db: &C,
    until: i64,
    limit: usize,
    first: impl IntoIterator<Item = String>,
) -> Result<Vec<String>, DbErr> {
    let mut prompts: Vec<String> = Vec::new();
    let keep = |prompt: String, prompts: &mut Vec<String>| {
        if !prompt.is_empty() && !prompts.contains(&prompt) && prompts.len() < limit {
            prompts.push(prompt);
        }
    };
    for prompt in first {
        keep(prompt, &mut prompts);
    }
    let mut rows = response::Entity::find()
        .filter(response::Column::ServedAt.lte(until))
        .order_by_desc(response::Column::ServedAt)
        .order_by_desc(response::Column::RequestId)
        .paginate(db, 256);
    while prompts.len() < limit {
        let Some(page) = rows.fetch_and_next().await? else {
            break;
        };
        for row in page {
            keep(quark_curate::pii::scrub(row.prompt.trim()).0, &mut prompts);
        }
    }
    Ok(prompts)
}
