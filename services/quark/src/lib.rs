//! The `quark` command, as a library so the end-to-end tests drive the same code.

pub mod broker;
pub mod commands;
pub mod services;
pub mod shutdown;

use sea_orm_migration::{MigrationTrait, MigratorTrait};

/// Every table of every service, in order.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(quark_events::bus::LedgerMigration),
            Box::new(quark_journal::JournalMigration),
            Box::new(quark_registry::RegistryMigration),
            Box::new(quark_augmenter::AugmenterMigration),
            Box::new(quark_schema_registry::SchemaRegistryMigration),
            Box::new(quark_augmenter::JoinMigration),
            Box::new(quark_gateway::LINEAGE.migration()),
            Box::new(quark_trainer::LINEAGE.migration()),
            Box::new(quark_evaluator::LINEAGE.migration()),
            Box::new(quark_registry::ForgottenMigration),
            Box::new(quark_augmenter::ratings::RatingsMigration),
            Box::new(quark_evaluator::shadow::ShadowMigration),
            Box::new(quark_registry::OperatorMigration),
            Box::new(quark_augmenter::TrainingsMigration),
        ]
    }
}
