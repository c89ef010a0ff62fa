//! The services this build of Quark can run: a closed list.

use quark_events::bus::{Handler, Publisher, RetryPolicy};
use quark_runtime::{ArtifactStore, Settings};
use sea_orm::DatabaseConnection;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// Records every event and its causal chain in the database.
    Journal,
    /// data.collected → deduplicated, filtered, PII-scrubbed dataset → dataset.prepared.
    Curator,
    /// Projections of models, aliases, datasets, evaluations and feedback; promotion and rollback.
    Registry,
    /// dataset.prepared / retrain.requested → pre-training or fine-tuning → model.trained.
    Trainer,
    /// model.trained → measured against the champion → eval.completed or eval.regressed.
    Evaluator,
    /// feedback.received → SFT, preference and evaluation examples → dataset.prepared, retrain.requested.
    Augmenter,
    /// dataset.prepared (knowledge) → passages → embeddings → a LanceDB index → index.updated.
    Indexer,
    /// The OpenAI-compatible HTTP API over the champion (gateway.listen).
    Gateway,
}

impl Service {
    pub const ALL: &'static [Service] = &[
        Service::Journal,
        Service::Curator,
        Service::Registry,
        Service::Trainer,
        Service::Evaluator,
        Service::Augmenter,
        Service::Indexer,
        Service::Gateway,
    ];

    /// The consumers a service runs beside its main one: the trainer and the evaluator keep
    /// their own lineage projection in a consumer of its own, so a long job never holds it
    /// back; the evaluator also judges the challenger's shadow answers.
    pub fn followers(
        self,
        settings: &Settings,
        db: &DatabaseConnection,
    ) -> anyhow::Result<Vec<Arc<dyn Handler>>> {
        Ok(match self {
            Service::Trainer => vec![Arc::new(quark_trainer::follower())],
            Service::Evaluator => vec![
                Arc::new(quark_evaluator::follower()),
                Arc::new(quark_evaluator::shadow::ShadowJudge::new(
                    Arc::new(settings.artifact_store()?),
                    db.clone(),
                    &settings.data_dir,
                    &settings.evaluate,
                )?),
            ],
            _ => vec![],
        })
    }

    /// How its consumers retry transient errors. A trainer or evaluator job that refers to
    /// what its follower has not folded yet retries for about half a minute before it gives up.
    pub fn retry(self) -> RetryPolicy {
        match self {
            Service::Trainer | Service::Evaluator => RetryPolicy {
                max_attempts: 12,
                max_backoff: std::time::Duration::from_secs(5),
                ..RetryPolicy::default()
            },
            _ => RetryPolicy::default(),
        }
    }

    /// The consumer of a service other than the gateway (which is started by `run`).
    pub fn handler(
        self,
        settings: &Settings,
        db: &DatabaseConnection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Arc<dyn Handler>> {
        let store =
            || -> anyhow::Result<Arc<ArtifactStore>> { Ok(Arc::new(settings.artifact_store()?)) };
        Ok(match self {
            Service::Journal => Arc::new(quark_journal::JournalService),
            Service::Curator => Arc::new(quark_curator::CuratorService::new(
                store()?,
                &settings.data_dir,
                &settings.curate,
            )),
            Service::Registry => Arc::new(quark_registry::RegistryService::new(
                db.clone(),
                settings.registry.clone(),
            )),
            Service::Trainer => Arc::new(
                quark_trainer::TrainerService::new(
                    store()?,
                    db.clone(),
                    &settings.data_dir,
                    settings.trainer.clone(),
                    settings.evaluate.clone(),
                    shutdown.clone(),
                )
                .with_progress(Publisher::new(&settings.bus, "quark-trainer")?),
            ),
            Service::Evaluator => Arc::new(quark_evaluator::EvaluatorService::new(
                store()?,
                db.clone(),
                &settings.data_dir,
                settings.evaluate.clone(),
                {
                    let settings = settings.clone();
                    quark_evaluator::suite::RedTeamLoader::spawn(move || {
                        crate::commands::moderation::red_team(&settings)
                    })
                },
            )?),
            Service::Augmenter => Arc::new(quark_augmenter::AugmenterService::new(
                store()?,
                db.clone(),
                settings.augment.clone(),
            )),
            Service::Indexer => Arc::new(quark_indexer::IndexerService::new(
                store()?,
                settings.retrieval.clone(),
                settings.retrieval.uri(&settings.data_dir),
                settings
                    .retrieval
                    .encoder_dir(std::env::var_os("QUARK_VENV").map(PathBuf::from).as_deref()),
            )),
            Service::Gateway => anyhow::bail!("the gateway is started by `run`"),
        })
    }
}
