//! An augmenter over real SQLite and a real artifact store, fed events the way the consumer
//! runner feeds them.

use quark_augmenter::ratings::RatingsMigration;
use quark_augmenter::{
    AugmenterMigration, AugmenterService, JoinMigration, TrainingsMigration, example,
};
use quark_events::Event;
use quark_events::bus::Handler;
use quark_runtime::ArtifactStore;
use quark_runtime::config::AugmentSettings;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait, TransactionTrait};
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use std::sync::Arc;

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(AugmenterMigration),
            Box::new(JoinMigration),
            Box::new(RatingsMigration),
            Box::new(TrainingsMigration),
        ]
    }
}

pub struct Augmenter {
    _dir: tempfile::TempDir,
    pub db: DatabaseConnection,
    pub store: Arc<ArtifactStore>,
    pub service: AugmenterService,
}

impl Augmenter {
    /// Releases once `min_examples` corrections are pending; no schedule.
    pub async fn new(min_examples: usize) -> Augmenter {
        Augmenter::with(AugmentSettings {
            min_examples,
            release_interval_secs: 0,
            reward_model: true,
            rloo_prompts: 0,
            training_timeout_secs: 3600,
        })
        .await
    }

    pub async fn with(settings: AugmentSettings) -> Augmenter {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let db = quark_runtime::db::open::<Migrator>(&url).await.unwrap();
        let store = Arc::new(ArtifactStore::local(dir.path().join("artifacts")).unwrap());
        let service = AugmenterService::new(store.clone(), db.clone(), settings);
        Augmenter {
            _dir: dir,
            db,
            store,
            service,
        }
    }

    /// What the consumer runner does with an event: handle, then apply in a transaction.
    pub async fn feed(&self, event: &Event) -> Vec<Event> {
        let out = self.service.handle(event).await.unwrap();
        let txn = self.db.begin().await.unwrap();
        self.service.apply(event, &txn).await.unwrap();
        txn.commit().await.unwrap();
        out
    }

    pub async fn examples(&self) -> u64 {
        example::Entity::find().count(&self.db).await.unwrap()
    }
}
