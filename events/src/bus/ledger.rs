//! The idempotency ledger: which consumer has processed which event. A row is written in the
//! same transaction as the handler's database effects, so an event applies exactly once per
//! consumer however often it is delivered.

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{ColumnDef, Index, Table};
use sea_orm::{ActiveValue::Set, DatabaseTransaction};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

pub mod processed_event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "processed_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub processed_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod consumer_position {
    use sea_orm::entity::prelude::*;

    /// The next offset a consumer will process, per partition: its progress, for `quark topics`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "consumer_positions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub topic: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub partition: i32,
        pub next_offset: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use consumer_position::Entity as ConsumerPositions;
pub use processed_event::Entity as ProcessedEvents;
use processed_event::{ActiveModel, Column};

pub(crate) async fn seen<C: ConnectionTrait>(
    db: &C,
    consumer: &str,
    event_id: &str,
) -> Result<bool, DbErr> {
    let found = ProcessedEvents::find_by_id((consumer.to_string(), event_id.to_string()))
        .one(db)
        .await?;
    Ok(found.is_some())
}

/// Records the event as processed by `consumer`; false when it already was (a concurrent
/// delivery won), in which case the caller must roll back.
pub(crate) async fn record(
    txn: &DatabaseTransaction,
    consumer: &str,
    event_id: &str,
    at_ms: i64,
) -> Result<bool, DbErr> {
    let row = ActiveModel {
        consumer: Set(consumer.to_string()),
        event_id: Set(event_id.to_string()),
        processed_at: Set(at_ms),
    };
    let result = ProcessedEvents::insert(row)
        .on_conflict_do_nothing()
        .exec_without_returning(txn)
        .await?;
    Ok(matches!(result, sea_orm::TryInsertResult::Inserted(n) if n > 0))
}

/// Records that `consumer` will next process `next_offset` of `topic`/`partition`.
pub(crate) async fn advance<C: ConnectionTrait>(
    db: &C,
    consumer: &str,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> Result<(), DbErr> {
    use consumer_position::{ActiveModel, Column};
    let row = ActiveModel {
        consumer: Set(consumer.to_string()),
        topic: Set(topic.to_string()),
        partition: Set(partition),
        next_offset: Set(next_offset),
    };
    ConsumerPositions::insert(row)
        .on_conflict(
            sea_orm::sea_query::OnConflict::columns([
                Column::Consumer,
                Column::Topic,
                Column::Partition,
            ])
            .update_column(Column::NextOffset)
            .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(drop)
}

/// Every consumer's position: (consumer, topic, partition, next offset).
pub async fn positions<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(String, String, i32, i64)>, DbErr> {
    Ok(ConsumerPositions::find()
        .all(db)
        .await?
        .into_iter()
        .map(|p| (p.consumer, p.topic, p.partition, p.next_offset))
        .collect())
}

/// Creates the `processed_events` and `consumer_positions` tables.
pub struct LedgerMigration;

impl MigrationName for LedgerMigration {
    fn name(&self) -> &str {
        "m0001_processed_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for LedgerMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProcessedEvents)
                    .if_not_exists()
                    .col(ColumnDef::new(Column::Consumer).string().not_null())
                    .col(ColumnDef::new(Column::EventId).string().not_null())
                    .col(ColumnDef::new(Column::ProcessedAt).big_integer().not_null())
                    .primary_key(Index::create().col(Column::Consumer).col(Column::EventId))
                    .to_owned(),
            )
            .await?;
        use consumer_position::Column as P;
        manager
            .create_table(
                Table::create()
                    .table(ConsumerPositions)
                    .if_not_exists()
                    .col(ColumnDef::new(P::Consumer).string().not_null())
                    .col(ColumnDef::new(P::Topic).string().not_null())
                    .col(ColumnDef::new(P::Partition).integer().not_null())
                    .col(ColumnDef::new(P::NextOffset).big_integer().not_null())
                    .primary_key(
                        Index::create()
                            .col(P::Consumer)
                            .col(P::Topic)
                            .col(P::Partition),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConsumerPositions).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ProcessedEvents).to_owned())
            .await
    }
}
