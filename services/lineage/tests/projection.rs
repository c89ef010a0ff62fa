//! The lineage projection over real SQLite: lookups, idempotence, and a champion that an old
//! promotion redelivered does not move back; two services' projections do not share rows.

use quark_events::samples::sample;
use quark_events::*;
use quark_lineage::{Lineage, Model};
use sea_orm::{Database, DatabaseConnection};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

const TRAINER: Lineage = Lineage::new("trainer");
const EVALUATOR: Lineage = Lineage::new("evaluator");

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(TRAINER.migration()),
            Box::new(EVALUATOR.migration()),
        ]
    }
}

async fn db() -> DatabaseConnection {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    db
}

fn promoted(model_id: Id, at: i64) -> ModelPromoted {
    let Event::ModelPromoted(mut p) = sample(EventKind::ModelPromoted, "registry") else {
        unreachable!()
    };
    p.alias = Alias::Champion;
    p.model_id = model_id;
    p.header.occurred_at = Timestamp(at);
    p
}

#[tokio::test]
async fn folds_datasets_tokenizers_and_models_once() {
    let db = db().await;
    let Event::DatasetPrepared(mut first) = sample(EventKind::DatasetPrepared, "curator") else {
        unreachable!()
    };
    first.header.occurred_at = Timestamp(1);
    let mut second = first.clone();
    (second.dataset_id, second.header.occurred_at) = (Id::random(), Timestamp(2));
    let mut sft = first.clone();
    (sft.dataset_id, sft.kind) = (Id::random(), DatasetKind::Sft);
    for event in [&second, &first, &sft, &first] {
        TRAINER.apply(&db, &event.clone().into()).await.unwrap();
    }
    let pretrain = TRAINER
        .datasets_of_kind(&db, DatasetKind::Pretrain)
        .await
        .unwrap();
    assert_eq!(
        pretrain,
        [first.clone(), second.clone()],
        "oldest first, once each"
    );
    assert_eq!(
        TRAINER.dataset(&db, sft.dataset_id).await.unwrap(),
        Some(sft)
    );

    let Event::TokenizerTrained(mut tokenizer) = sample(EventKind::TokenizerTrained, "curator")
    else {
        unreachable!()
    };
    tokenizer.dataset_id = first.dataset_id;
    assert_eq!(
        TRAINER.tokenizer_for(&db, first.dataset_id).await.unwrap(),
        None
    );
    TRAINER.apply(&db, &tokenizer.clone().into()).await.unwrap();
    assert_eq!(
        TRAINER.tokenizer_for(&db, first.dataset_id).await.unwrap(),
        Some(tokenizer)
    );

    let Event::ModelTrained(trained) = sample(EventKind::ModelTrained, "trainer") else {
        unreachable!()
    };
    TRAINER.apply(&db, &trained.clone().into()).await.unwrap();
    assert_eq!(
        TRAINER.model(&db, trained.model_id).await.unwrap(),
        Some(Model::trained(&trained))
    );
    // Another service's projection saw none of it.
    assert_eq!(
        EVALUATOR.dataset(&db, first.dataset_id).await.unwrap(),
        None
    );
    assert_eq!(EVALUATOR.model(&db, trained.model_id).await.unwrap(), None);
}

#[tokio::test]
async fn the_champion_comes_with_its_checkpoint_and_never_moves_back() {
    let db = db().await;
    assert_eq!(TRAINER.champion(&db).await.unwrap(), None);
    let (old, new) = (promoted(Id::random(), 10), promoted(Id::random(), 20));
    TRAINER.apply(&db, &new.clone().into()).await.unwrap();
    TRAINER.apply(&db, &old.clone().into()).await.unwrap();
    let champion = TRAINER.champion(&db).await.unwrap().unwrap();
    assert_eq!(champion.promotion, new);
    assert_eq!(champion.model, Model::promoted(&new).unwrap());
    assert_eq!(Some(champion.model.checkpoint), new.checkpoint);

    // A promotion written before promotions carried the checkpoint: the alias moves, the
    // model is unknown until its model.trained is folded.
    let mut bare = promoted(Id::random(), 30);
    bare.checkpoint = None;
    TRAINER.apply(&db, &bare.clone().into()).await.unwrap();
    assert_eq!(TRAINER.champion_promotion(&db).await.unwrap(), Some(bare));
    assert_eq!(TRAINER.champion(&db).await.unwrap(), None);
}

#[tokio::test]
async fn forgotten_documents_are_folded_and_found_by_their_event() {
    let db = db().await;
    assert!(TRAINER.forgotten(&db).await.unwrap().is_empty());
    let forget = |document: &str| {
        let Event::DocumentForgotten(mut f) = sample(EventKind::DocumentForgotten, "curator")
        else {
            unreachable!()
        };
        f.document_id = document.into();
        Event::DocumentForgotten(f)
    };
    let first = forget("hamlet.txt");
    for event in [&first, &first, &forget("hamlet.txt"), &forget("notes/a.md")] {
        TRAINER.apply(&db, event).await.unwrap();
    }
    let id = first.header().event_id;
    let Event::DocumentForgotten(expected) = &first else {
        unreachable!()
    };
    assert_eq!(
        TRAINER.forgetting(&db, id).await.unwrap().as_ref(),
        Some(expected)
    );
    assert_eq!(TRAINER.forgetting(&db, Id::random()).await.unwrap(), None);
    let mut forgotten: Vec<String> = TRAINER.forgotten(&db).await.unwrap().into_iter().collect();
    forgotten.sort();
    assert_eq!(forgotten, ["hamlet.txt", "notes/a.md"]);
    assert!(
        EVALUATOR.forgotten(&db).await.unwrap().is_empty(),
        "another service's projection is its own"
    );
}
