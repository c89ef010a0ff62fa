//! The journal service: records every event it sees, with its causal chain, in the database.
//! `quark trace <correlation id>` reads one learning cycle back from it, and because it is a
//! projection it can be dropped and rebuilt by replaying the topics.

use async_trait::async_trait;
use quark_events::bus::Handler;
use quark_events::{Event, EventKind};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{ColumnDef, Index, Table};
use sea_orm::{ActiveValue::Set, DatabaseTransaction, QueryOrder};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

pub mod entry {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "journal")]
    pub struct Model {
        /// Order of recording.
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub event_id: String,
        pub event_type: String,
        pub occurred_at: i64,
        pub producer: String,
        pub correlation_id: String,
        pub causation_id: Option<String>,
        /// The event as JSON.
        #[sea_orm(column_type = "Text")]
        pub payload: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entry::{Entity as Journal, Model as JournalEntry};

pub const NAME: &str = "journal";

/// The journal consumes every event type.
pub struct JournalService;

#[async_trait]
impl Handler for JournalService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        EventKind::ALL.to_vec()
    }

    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        let header = event.header();
        entry::ActiveModel {
            seq: Default::default(),
            event_id: Set(header.event_id.to_string()),
            event_type: Set(event.kind().topic().to_string()),
            occurred_at: Set(header.occurred_at.0),
            producer: Set(header.producer.clone()),
            correlation_id: Set(header.correlation_id.to_string()),
            causation_id: Set(header.causation_id.map(|id| id.to_string())),
            payload: Set(event.to_json().to_string()),
        }
        .insert(txn)
        .await
        .map(drop)
    }
}

/// Every recorded event of one learning cycle, in the order they happened.
pub async fn cycle<C: ConnectionTrait>(
    db: &C,
    correlation_id: &str,
) -> Result<Vec<JournalEntry>, DbErr> {
    Journal::find()
        .filter(entry::Column::CorrelationId.eq(correlation_id))
        .order_by_asc(entry::Column::OccurredAt)
        .order_by_asc(entry::Column::Seq)
        .all(db)
        .await
}

/// Creates the `journal` table.
pub struct JournalMigration;

impl MigrationName for JournalMigration {
    fn name(&self) -> &str {
        "m0002_journal"
    }
}

#[async_trait]
impl MigrationTrait for JournalMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use entry::Column;
        manager
            .create_table(
                Table::create()
                    .table(Journal)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Column::Seq)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Column::EventId).string().not_null())
                    .col(ColumnDef::new(Column::EventType).string().not_null())
                    .col(ColumnDef::new(Column::OccurredAt).big_integer().not_null())
                    .col(ColumnDef::new(Column::Producer).string().not_null())
                    .col(ColumnDef::new(Column::CorrelationId).string().not_null())
                    .col(ColumnDef::new(Column::CausationId).string().null())
                    .col(ColumnDef::new(Column::Payload).text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("journal_correlation")
                    .table(Journal)
                    .col(Column::CorrelationId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Journal).to_owned())
            .await
    }
}
