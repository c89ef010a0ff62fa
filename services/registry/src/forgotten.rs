//! Models that learnt from a forgotten document. document.forgotten names the datasets that
//! held it; every model whose lineage (its datasets and its ancestors') includes one of them
//! is flagged, and so is every model fine-tuned later from a flagged one. When the champion is
//! among them, the policy may ask for a full retrain on its pre-training data, which the
//! trainer then reads without the document.

use crate::tables::forgotten;
use crate::{NAME, RegistrySettings, alias_of, dataset, insert_new, models};
use quark_events::{
    Alias, DatasetKind, DocumentForgotten, EventHeader, Id, ModelTrained, RetrainRequested,
    RetrainTrigger, RunKind,
};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
};
use std::collections::HashMap;

/// Every model by id, for walking lineages.
async fn all_models<C: ConnectionTrait>(db: &C) -> Result<HashMap<Id, ModelTrained>, DbErr> {
    Ok(models(db)
        .await?
        .into_iter()
        .map(|m| (m.model_id, m))
        .collect())
}

/// The datasets `model` learnt from, its own first, then each ancestor's.
fn lineage(model: &ModelTrained, by_id: &HashMap<Id, ModelTrained>) -> Vec<Id> {
    let mut datasets: Vec<Id> = Vec::new();
    let mut visited = vec![model.model_id];
    let mut next = Some(model);
    while let Some(m) = next {
        for id in &m.dataset_ids {
            if !datasets.contains(id) {
                datasets.push(*id);
            }
        }
        // A parent named twice (events from elsewhere may be wrong) ends the walk.
        next = m
            .parent_model_id
            .filter(|p| !visited.contains(p))
            .and_then(|p| by_id.get(&p));
        visited.extend(next.map(|m| m.model_id));
    }
    datasets
}

fn held_it(forgotten: &DocumentForgotten, learnt: &[Id]) -> bool {
    forgotten.dataset_ids.iter().any(|d| learnt.contains(d))
}

/// Flags every model whose lineage held the forgotten document.
pub(crate) async fn flag<C: ConnectionTrait>(
    db: &C,
    forgotten: &DocumentForgotten,
) -> Result<(), DbErr> {
    let by_id = all_models(db).await?;
    for model in by_id.values() {
        if held_it(forgotten, &lineage(model, &by_id)) {
            let document = &forgotten.document_id;
            insert(db, model.model_id, document, &forgotten.header).await?;
        }
    }
    Ok(())
}

/// A model fine-tuned from a flagged one learnt what its parent learnt: it inherits the flags.
pub(crate) async fn inherit<C: ConnectionTrait>(
    db: &C,
    trained: &ModelTrained,
) -> Result<(), DbErr> {
    let Some(parent) = trained.parent_model_id else {
        return Ok(());
    };
    for flag in flags_of(db, parent).await? {
        insert(db, trained.model_id, &flag.document_id, &trained.header).await?;
    }
    Ok(())
}

async fn insert<C: ConnectionTrait>(
    db: &C,
    model_id: Id,
    document_id: &str,
    cause: &EventHeader,
) -> Result<(), DbErr> {
    let row = forgotten::ActiveModel {
        model_id: Set(model_id.to_string()),
        document_id: Set(document_id.to_string()),
        flagged_at: Set(cause.occurred_at.0),
        cause: Set(cause.event_id.to_string()),
    };
    let key = [forgotten::Column::ModelId, forgotten::Column::DocumentId];
    insert_new(db, row, key).await
}

/// Every flag, by model then document.
pub async fn forgotten<C: ConnectionTrait>(db: &C) -> Result<Vec<forgotten::Model>, DbErr> {
    forgotten::Entity::find()
        .order_by_asc(forgotten::Column::ModelId)
        .order_by_asc(forgotten::Column::DocumentId)
        .all(db)
        .await
}

async fn flags_of<C: ConnectionTrait>(db: &C, model: Id) -> Result<Vec<forgotten::Model>, DbErr> {
    forgotten::Entity::find()
        .filter(forgotten::Column::ModelId.eq(model.to_string()))
        .order_by_asc(forgotten::Column::DocumentId)
        .all(db)
        .await
}

/// The full retrain the policy asks for when the champion learnt from the forgotten
/// document: from scratch, on the pre-training datasets of its lineage.
pub(crate) async fn retrain<C: ConnectionTrait>(
    db: &C,
    forgotten: &DocumentForgotten,
    policy: &RegistrySettings,
) -> Result<Option<RetrainRequested>, DbErr> {
    if !policy.retrain_forgotten_champion {
        return Ok(None);
    }
    let Some(champion) = alias_of(db, Alias::Champion).await? else {
        return Ok(None);
    };
    let by_id = all_models(db).await?;
    let Some(model) = by_id.get(&champion) else {
        return Ok(None);
    };
    let learnt = lineage(model, &by_id);
    if !held_it(forgotten, &learnt) {
        return Ok(None);
    }
    let mut pretrain = Vec::new();
    for id in learnt {
        if dataset(db, id)
            .await?
            .is_some_and(|d| d.kind == DatasetKind::Pretrain)
        {
            pretrain.push(id);
        }
    }
    if pretrain.is_empty() {
        return Ok(None);
    }
    let mut header = EventHeader::caused_by(&forgotten.header, NAME, "retrain");
    // Dated by its cause, as promotions are: a redelivery asks for exactly the same.
    header.occurred_at = forgotten.header.occurred_at;
    Ok(Some(RetrainRequested {
        header,
        request_id: Id::derived(forgotten.header.event_id, "retrain"),
        run_kind: RunKind::Pretrain,
        base_model_id: None,
        dataset_ids: pretrain,
        trigger: RetrainTrigger::Manual,
        reason: format!(
            "the champion {champion} learnt from the forgotten document {:?}",
            forgotten.document_id
        ),
    }))
}
