//! The augmenter's tables.

use crate::{example, inflight, join};
use async_trait::async_trait;
use sea_orm::{DbErr, Schema};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

/// Creates the augmenter's table.
pub struct AugmenterMigration;

impl MigrationName for AugmenterMigration {
    fn name(&self) -> &str {
        "m0004_augmenter"
    }
}

#[async_trait]
impl MigrationTrait for AugmenterMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(example::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

/// Creates the augmenter's tables for joining feedback to responses.
pub struct JoinMigration;

impl MigrationName for JoinMigration {
    fn name(&self) -> &str {
        "m0005_augmenter_join"
    }
}

#[async_trait]
impl MigrationTrait for JoinMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(join::response::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                schema
                    .create_table_from_entity(join::parked::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        let index = schema
            .create_index_from_entity(join::parked::Entity)
            .into_iter()
            .next();
        if let Some(mut index) = index {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// Creates the table of released trainings in flight.
pub struct TrainingsMigration;

impl MigrationName for TrainingsMigration {
    fn name(&self) -> &str {
        "m0012_augmenter_trainings"
    }
}

#[async_trait]
impl MigrationTrait for TrainingsMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(inflight::request::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}
