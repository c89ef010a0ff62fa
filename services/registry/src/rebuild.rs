//! Replay's side of the registry: rebuilding it from every event, and comparing two
//! registries by a snapshot of their rows.

use crate::fold;
use crate::tables::{
    self, alias, dataset, evaluation, feedback, forgotten, model, promotion, tokenizer,
};
use quark_events::Event;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait};

/// Every row of every registry table, in a stable order: two registries are the same
/// projection when their snapshots are equal.
pub async fn snapshot<C: ConnectionTrait>(db: &C) -> Result<serde_json::Value, DbErr> {
    async fn rows<C: ConnectionTrait, E: EntityTrait>(
        db: &C,
    ) -> Result<Vec<serde_json::Value>, DbErr> {
        let mut rows: Vec<serde_json::Value> = E::find().into_json().all(db).await?;
        rows.sort_by_key(|row| row.to_string());
        Ok(rows)
    }
    Ok(serde_json::json!({
        "models": rows::<_, model::Entity>(db).await?,
        "datasets": rows::<_, dataset::Entity>(db).await?,
        "tokenizers": rows::<_, tokenizer::Entity>(db).await?,
        "evaluations": rows::<_, evaluation::Entity>(db).await?,
        "promotions": rows::<_, promotion::Entity>(db).await?,
        "aliases": rows::<_, alias::Entity>(db).await?,
        "feedback": rows::<_, feedback::Entity>(db).await?,
        "forgotten": rows::<_, forgotten::Entity>(db).await?,
    }))
}

/// Rebuilds the registry from `events` (every event of the topics, in any order): clears
/// the tables and folds the events in the order they happened. The alias moves are the
/// model.promoted events among them, stamped in the order the registry made them.
pub async fn rebuild(db: &DatabaseConnection, mut events: Vec<Event>) -> Result<usize, DbErr> {
    use sea_orm::TransactionTrait;
    // Time first; within a millisecond, the loop's own order (a cause before its effects).
    events.sort_by_key(|e| (e.header().occurred_at.0, e.kind()));
    let txn = db.begin().await?;
    tables::clear(&txn).await?;
    for event in &events {
        fold(&txn, event).await?;
    }
    txn.commit().await?;
    Ok(events.len())
}
