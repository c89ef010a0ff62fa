//! Thumbs up and down as preferences: two responses to the same prompt, one rated up (4 or
//! 5 of 5) and one down (1 or 2), make a preference pair (chosen = the one rated up), whichever
//! rating comes second. A plain rating (no correction, no preferred response) is kept, its
//! prompt normalised and both PII-scrubbed, until a rating of the other sign on another response to that prompt
//! arrives.

use async_trait::async_trait;
use quark_curate::normalize::{exact_key, normalize};
use quark_events::FeedbackReceived;
use quark_runtime::db::insert_new;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, QueryOrder, Schema};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

pub mod rating {
    use sea_orm::entity::prelude::*;

    /// A response rated up or down, waiting to be paired.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "augmenter_ratings")]
    pub struct Model {
        /// The feedback that rated it.
        #[sea_orm(primary_key, auto_increment = false)]
        pub feedback_id: String,
        /// The normalised prompt, hashed.
        #[sea_orm(indexed)]
        pub prompt_key: String,
        #[sea_orm(column_type = "Text")]
        pub prompt: String,
        #[sea_orm(column_type = "Text")]
        pub response: String,
        pub up: bool,
        pub received_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn clean(text: &str) -> String {
    quark_curate::pii::scrub(text).0
}

fn key(text: &str) -> String {
    format!("{:032x}", exact_key(&normalize(text)))
}

/// The sign of a plain rating: up, down, or none (a 3, or feedback that says more).
fn sign(feedback: &FeedbackReceived) -> Option<bool> {
    let plain = feedback.correction.is_none() && feedback.preferred_response.is_none();
    match feedback.rating {
        _ if !plain || feedback.response.trim().is_empty() => None,
        4.. => Some(true),
        ..=2 => Some(false),
        _ => None,
    }
}

/// The (prompt, chosen, rejected) pairs a plain rating completes with those kept before:
/// each earlier rating of the other sign on another response to the same prompt.
pub async fn pairs<C: ConnectionTrait>(
    db: &C,
    feedback: &FeedbackReceived,
) -> Result<Vec<(String, String, String)>, DbErr> {
    let Some(up) = sign(feedback) else {
        return Ok(vec![]);
    };
    let (prompt, served) = (clean(&feedback.prompt), clean(&feedback.response));
    let response = key(&served);
    let earlier = rating::Entity::find()
        .filter(rating::Column::PromptKey.eq(key(&prompt)))
        .filter(rating::Column::Up.eq(!up))
        .order_by_asc(rating::Column::ReceivedAt)
        .order_by_asc(rating::Column::FeedbackId)
        .all(db)
        .await?;
    Ok(earlier
        .into_iter()
        .filter(|r| key(&r.response) != response)
        .map(|r| match up {
            true => (r.prompt, served.clone(), r.response),
            false => (r.prompt, r.response, served.clone()),
        })
        .collect())
}

/// Keeps a plain rating for the ratings to come (once per feedback).
pub(crate) async fn record<C: ConnectionTrait>(
    db: &C,
    feedback: &FeedbackReceived,
) -> Result<(), DbErr> {
    let Some(up) = sign(feedback) else {
        return Ok(());
    };
    let prompt = clean(&feedback.prompt);
    let row = rating::ActiveModel {
        feedback_id: Set(feedback.feedback_id.to_string()),
        prompt_key: Set(key(&prompt)),
        prompt: Set(prompt),
        response: Set(clean(&feedback.response)),
        up: Set(up),
        received_at: Set(feedback.header.occurred_at.0),
    };
    insert_new(db, row, [rating::Column::FeedbackId]).await
}

/// Creates the table of ratings waiting to be paired.
pub struct RatingsMigration;

impl MigrationName for RatingsMigration {
    fn name(&self) -> &str {
        "m0006_augmenter_ratings"
    }
}

#[async_trait]
impl MigrationTrait for RatingsMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(rating::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for mut index in schema.create_index_from_entity(rating::Entity) {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
