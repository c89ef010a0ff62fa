//! The registry's tables. Each row keeps the event it came from as JSON, so every field of
//! the event is available without a column per field; the columns are what queries select on.

use async_trait::async_trait;
use sea_orm::{DbErr, EntityTrait, Schema};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

pub mod model {
    use sea_orm::entity::prelude::*;

    /// One trained model (model.trained).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "registry_models")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub model_id: String,
        pub run_kind: String,
        pub parent_model_id: Option<String>,
        pub trained_at: i64,
        #[sea_orm(column_type = "Text")]
        pub event: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod dataset {
    use sea_orm::entity::prelude::*;

    /// One prepared dataset (dataset.prepared).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "registry_datasets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub dataset_id: String,
        pub kind: String,
        pub prepared_at: i64,
        #[sea_orm(column_type = "Text")]
        pub event: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod tokenizer {
    use sea_orm::entity::prelude::*;

    /// One trained tokenizer (tokenizer.trained) and the dataset it was trained on.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "registry_tokenizers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tokenizer_id: String,
        pub dataset_id: String,
        #[sea_orm(column_type = "Text")]
        pub event: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod evaluation {
    use sea_orm::entity::prelude::*;

    /// One evaluation (eval.completed or eval.regressed).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize)]
    #[sea_orm(table_name = "registry_evaluations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub evaluation_id: String,
        pub model_id: String,
        pub passed: bool,
        /// `offline_gate` or `live_telemetry`.
        pub source: String,
        pub evaluated_at: i64,
        #[sea_orm(column_type = "Text")]
        pub event: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod promotion {
    use sea_orm::entity::prelude::*;

    /// One alias move (model.promoted), in the order they took effect.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize)]
    #[sea_orm(table_name = "registry_promotions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub model_id: String,
        pub alias: String,
        pub previous_model_id: Option<String>,
        pub reason: String,
        pub evaluation_id: Option<String>,
        pub promoted_at: i64,
        /// Who moved it by hand, and why (promotion.requested); none for the registry's own.
        pub operator: Option<String>,
        pub note: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod alias {
    use sea_orm::entity::prelude::*;

    /// Where each alias (champion, challenger, previous) points now.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "registry_aliases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub alias: String,
        pub model_id: String,
        pub since: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod feedback {
    use sea_orm::entity::prelude::*;

    /// Feedback counts per model (feedback.received) and live traffic (telemetry.reported).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "registry_feedback")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub model_id: String,
        pub feedback: i64,
        pub negative: i64,
        pub corrections: i64,
        pub preferences: i64,
        pub requests: i64,
        pub errors: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod forgotten {
    use sea_orm::entity::prelude::*;

    /// A model that learnt from a document since forgotten (document.forgotten), directly or
    /// through the model it was fine-tuned from.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize)]
    #[sea_orm(table_name = "registry_forgotten")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub model_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub document_id: String,
        /// When the flag was set (the forgetting, or the training of a flagged model's child).
        pub flagged_at: i64,
        /// The event that set it.
        pub cause: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Creates the registry's tables from their entities.
pub struct RegistryMigration;

impl MigrationName for RegistryMigration {
    fn name(&self) -> &str {
        "m0003_registry"
    }
}

#[async_trait]
impl MigrationTrait for RegistryMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        macro_rules! create {
            ($($entity:path),*) => {$(
                manager
                    .create_table(schema.create_table_from_entity($entity).if_not_exists().to_owned())
                    .await?;
            )*};
        }
        create!(
            model::Entity,
            dataset::Entity,
            tokenizer::Entity,
            evaluation::Entity,
            promotion::Entity,
            alias::Entity,
            feedback::Entity
        );
        Ok(())
    }
}

/// The table of models that learnt from forgotten documents (added after the first tables).
pub struct ForgottenMigration;

impl MigrationName for ForgottenMigration {
    fn name(&self) -> &str {
        "m0010_registry_forgotten"
    }
}

#[async_trait]
impl MigrationTrait for ForgottenMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        let mut table = schema.create_table_from_entity(forgotten::Entity);
        manager.create_table(table.if_not_exists().to_owned()).await
    }
}

/// Who moved an alias by hand and why, on each promotion (added after the first tables;
/// tables created since have the columns already).
pub struct OperatorMigration;

impl MigrationName for OperatorMigration {
    fn name(&self) -> &str {
        "m0011_registry_promotion_operator"
    }
}

#[async_trait]
impl MigrationTrait for OperatorMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use sea_orm::sea_query::{Alias, ColumnDef, Table};
        let table = "registry_promotions";
        for column in ["operator", "note"] {
            if !manager.has_column(table, column).await? {
                let add = ColumnDef::new(Alias::new(column))
                    .string()
                    .null()
                    .to_owned();
                let alter = Table::alter()
                    .table(Alias::new(table))
                    .add_column(add)
                    .to_owned();
                manager.alter_table(alter).await?;
            }
        }
        Ok(())
    }
}

/// Empties every registry table (before a replay rebuilds them).
pub async fn clear<C: sea_orm::ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    model::Entity::delete_many().exec(db).await?;
    dataset::Entity::delete_many().exec(db).await?;
    tokenizer::Entity::delete_many().exec(db).await?;
    evaluation::Entity::delete_many().exec(db).await?;
    promotion::Entity::delete_many().exec(db).await?;
    alias::Entity::delete_many().exec(db).await?;
    feedback::Entity::delete_many().exec(db).await?;
    forgotten::Entity::delete_many().exec(db).await?;
    Ok(())
}
