//! What the registry's tests share: a SQLite database with the registry's tables, trained
//! models and gate results, and a fold that runs as the live registry does.

#![allow(dead_code)] // each test binary uses its own share of them

use quark_events::*;
use quark_registry::{RegistrySettings, decide, project};
use sea_orm::DatabaseConnection;
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use std::collections::HashMap;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(quark_registry::RegistryMigration),
            Box::new(quark_registry::ForgottenMigration),
            Box::new(quark_registry::OperatorMigration),
        ]
    }
}

pub async fn database(dir: &tempfile::TempDir, name: &str) -> DatabaseConnection {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
    quark_runtime::db::open::<Migrator>(&url).await.unwrap()
}

pub fn artifact() -> Artifact {
    Artifact {
        uri: "file:///x".into(),
        sha256: "00".repeat(32),
        size_bytes: 1,
    }
}

pub fn header(at: i64) -> EventHeader {
    let mut h = EventHeader::root("test");
    h.occurred_at = Timestamp(at);
    h
}

pub fn trained(at: i64, parent: Option<Id>) -> ModelTrained {
    ModelTrained {
        header: header(at),
        model_id: Id::random(),
        run_kind: RunKind::Sft,
        parent_model_id: parent,
        dataset_ids: vec![],
        tokenizer_id: Id::random(),
        shape: ModelShape {
            n_layer: 1,
            n_head: 1,
            n_embd: 8,
            block_size: 8,
            vocab_size: 8,
            parameters: 1,
        },
        hyperparameters: HashMap::new(),
        checkpoint: artifact(),
        metrics: HashMap::new(),
        device: "Cpu".into(),
        steps: 1,
        tokens: 1,
        duration_ms: 1,
        adapter: None,
        choice: None,
    }
}

pub fn passed(at: i64, model: &ModelTrained, ok: bool) -> Event {
    let check = GateCheck {
        metric: "perplexity".into(),
        rule: GateRule::MaxRelativeIncrease,
        baseline: None,
        candidate: 1.0,
        threshold: 0.02,
        passed: ok,
    };
    if ok {
        Event::EvalCompleted(EvalCompleted {
            header: header(at),
            evaluation_id: Id::random(),
            model_id: model.model_id,
            baseline_model_id: None,
            metrics: HashMap::new(),
            checks: vec![check],
            report: artifact(),
            source: None,
        })
    } else {
        Event::EvalRegressed(EvalRegressed {
            header: header(at),
            evaluation_id: Id::random(),
            model_id: model.model_id,
            baseline_model_id: None,
            source: RegressionSource::OfflineGate,
            metrics: HashMap::new(),
            regressions: vec![check],
            report: None,
        })
    }
}

/// Folds `events` as the live registry does: decide, emit (into the returned list), record.
pub async fn live(
    db: &DatabaseConnection,
    events: &[Event],
    settings: &RegistrySettings,
) -> Vec<Event> {
    let mut all = Vec::new();
    for event in events {
        let promotions = decide(db, event, settings).await.unwrap();
        project(db, event, settings).await.unwrap();
        all.push(event.clone());
        for p in promotions {
            let p = Event::ModelPromoted(p);
            project(db, &p, settings).await.unwrap();
            all.push(p);
        }
    }
    all
}
