//! Lineage as one service sees it: the datasets, tokenizers and models it has been told of,
//! the champion and the documents forgotten, folded from dataset.prepared, tokenizer.trained,
//! model.trained, model.promoted and document.forgotten into a table of its own.
//!
//! Services share events, never tables: each service that needs this projection creates its
//! own [`Lineage`] with its own prefix (`trainer` → table `trainer_lineage`), folds the events
//! in [`Handler::apply`] (so a restarted consumer, which resumes from its committed offset,
//! finds what it folded before), and reads it back with the lookups below. [`Follower`] is a
//! consumer that does only that, for a service whose own handler runs long jobs.
//!
//! Each row keeps the event (or the [`Model`]) it came from as JSON: `entry` and `key` name
//! it, `tag` and `at` are what lookups select and order on.

mod table;

use async_trait::async_trait;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{
    Artifact, DatasetKind, DatasetPrepared, DocumentForgotten, Event, EventKind, Id, ModelPromoted,
    ModelTrained, RunKind, Timestamp, TokenizerTrained,
};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
pub use table::LineageMigration;
use table::{Entry, Row};

/// The event types the projection folds.
pub const EVENTS: &[EventKind] = &[
    EventKind::DatasetPrepared,
    EventKind::TokenizerTrained,
    EventKind::ModelTrained,
    EventKind::ModelPromoted,
    EventKind::DocumentForgotten,
];

/// The tag of every forgotten document's row.
const FORGOTTEN: &str = "forgotten";

/// A model as a consumer uses it: where its checkpoint is, and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub model_id: Id,
    pub checkpoint: Artifact,
    pub tokenizer_id: Id,
    pub tokenizer: Option<Artifact>,
    pub run_kind: Option<RunKind>,
    pub parent_model_id: Option<Id>,
    pub dataset_ids: Vec<Id>,
    pub trained_at: Timestamp,
}

impl Model {
    pub fn trained(m: &ModelTrained) -> Model {
        Model {
            model_id: m.model_id,
            checkpoint: m.checkpoint.clone(),
            tokenizer_id: m.tokenizer_id,
            tokenizer: None,
            run_kind: Some(m.run_kind),
            parent_model_id: m.parent_model_id,
            dataset_ids: m.dataset_ids.clone(),
            trained_at: m.header.occurred_at,
        }
    }

    /// The model a promotion carries; none for a promotion written before promotions carried
    /// the checkpoint.
    pub fn promoted(p: &ModelPromoted) -> Option<Model> {
        Some(Model {
            model_id: p.model_id,
            checkpoint: p.checkpoint.clone()?,
            tokenizer_id: p.tokenizer_id?,
            tokenizer: p.tokenizer.clone(),
            run_kind: p.run_kind,
            parent_model_id: p.parent_model_id,
            dataset_ids: p.dataset_ids.clone().unwrap_or_default(),
            trained_at: p.trained_at.unwrap_or(p.header.occurred_at),
        })
    }
}

/// The champion: its model and the promotion that made it champion.
#[derive(Clone, Debug, PartialEq)]
pub struct Champion {
    pub model: Model,
    pub promotion: ModelPromoted,
}

/// One service's projection, in the table `<prefix>_lineage`.
#[derive(Clone, Debug)]
pub struct Lineage {
    prefix: &'static str,
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("events and models serialise to JSON")
}

fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Lineage {
    pub const fn new(prefix: &'static str) -> Lineage {
        Lineage { prefix }
    }

    fn table(&self) -> String {
        format!("{}_lineage", self.prefix)
    }

    /// The migration that creates this projection's table.
    pub fn migration(&self) -> LineageMigration {
        LineageMigration::new(self.table())
    }

    /// Folds one event in (idempotent: folding it again changes nothing).
    pub async fn apply<C: ConnectionTrait>(&self, db: &C, event: &Event) -> Result<(), DbErr> {
        let table = self.table();
        let row = |entry, key: String, tag: String, at: Timestamp, body: String| Row {
            entry,
            key,
            tag,
            at: at.0,
            body,
        };
        match event {
            Event::DatasetPrepared(d) => {
                let r = row(
                    Entry::Dataset,
                    d.dataset_id.to_string(),
                    label(&d.kind),
                    d.header.occurred_at,
                    json(d),
                );
                table::insert(db, &table, r).await
            }
            Event::TokenizerTrained(t) => {
                let r = row(
                    Entry::Tokenizer,
                    t.dataset_id.to_string(),
                    t.tokenizer_id.to_string(),
                    t.header.occurred_at,
                    json(t),
                );
                table::insert(db, &table, r).await
            }
            Event::ModelTrained(m) => self.put_model(db, &Model::trained(m)).await,
            Event::ModelPromoted(p) => {
                if let Some(model) = Model::promoted(p) {
                    self.put_model(db, &model).await?;
                }
                let r = row(
                    Entry::Alias,
                    p.alias_key(),
                    p.model_id.to_string(),
                    p.header.occurred_at,
                    json(p),
                );
                // An old promotion redelivered must not move the alias back.
                table::upsert_if_newer(db, &table, r).await
            }
            Event::DocumentForgotten(f) => {
                let r = row(
                    Entry::Forgotten,
                    f.header.event_id.to_string(),
                    FORGOTTEN.to_string(),
                    f.header.occurred_at,
                    json(f),
                );
                table::insert(db, &table, r).await
            }
            _ => Ok(()),
        }
    }

    async fn put_model<C: ConnectionTrait>(&self, db: &C, model: &Model) -> Result<(), DbErr> {
        let r = Row {
            entry: Entry::Model,
            key: model.model_id.to_string(),
            // By parent: the models trained from a base are found by it.
            tag: model
                .parent_model_id
                .map(|p| p.to_string())
                .unwrap_or_default(),
            at: model.trained_at.0,
            body: json(model),
        };
        table::insert(db, &self.table(), r).await
    }

    pub async fn dataset<C: ConnectionTrait>(
        &self,
        db: &C,
        id: Id,
    ) -> Result<Option<DatasetPrepared>, DbErr> {
        table::get(db, &self.table(), Entry::Dataset, &id.to_string()).await
    }

    /// Every dataset of a kind, oldest first.
    pub async fn datasets_of_kind<C: ConnectionTrait>(
        &self,
        db: &C,
        kind: DatasetKind,
    ) -> Result<Vec<DatasetPrepared>, DbErr> {
        table::tagged(db, &self.table(), Entry::Dataset, Some(&label(&kind))).await
    }

    /// The tokenizer trained on a dataset.
    pub async fn tokenizer_for<C: ConnectionTrait>(
        &self,
        db: &C,
        dataset_id: Id,
    ) -> Result<Option<TokenizerTrained>, DbErr> {
        table::get(db, &self.table(), Entry::Tokenizer, &dataset_id.to_string()).await
    }

    pub async fn model<C: ConnectionTrait>(&self, db: &C, id: Id) -> Result<Option<Model>, DbErr> {
        table::get(db, &self.table(), Entry::Model, &id.to_string()).await
    }

    /// The models trained from `parent`, oldest first.
    pub async fn children<C: ConnectionTrait>(
        &self,
        db: &C,
        parent: Id,
    ) -> Result<Vec<Model>, DbErr> {
        table::tagged(db, &self.table(), Entry::Model, Some(&parent.to_string())).await
    }

    /// The newest child of `parent` a run of `run_kind` trained (a reward model: the judge of
    /// the parent's policies).
    pub async fn newest_child<C: ConnectionTrait>(
        &self,
        db: &C,
        parent: Id,
        run_kind: RunKind,
    ) -> Result<Option<Model>, DbErr> {
        let children = self.children(db, parent).await?;
        Ok(children
            .into_iter()
            .rev()
            .find(|m| m.run_kind == Some(run_kind)))
    }

    /// The ids of the documents forgotten so far: no training set may hold them.
    pub async fn forgotten<C: ConnectionTrait>(&self, db: &C) -> Result<HashSet<String>, DbErr> {
        let rows: Vec<DocumentForgotten> =
            table::tagged(db, &self.table(), Entry::Forgotten, Some(FORGOTTEN)).await?;
        Ok(rows.into_iter().map(|f| f.document_id).collect())
    }

    /// The document.forgotten with this event id, once folded.
    pub async fn forgetting<C: ConnectionTrait>(
        &self,
        db: &C,
        event_id: Id,
    ) -> Result<Option<DocumentForgotten>, DbErr> {
        table::get(db, &self.table(), Entry::Forgotten, &event_id.to_string()).await
    }

    /// The promotion the champion alias last moved with, if any.
    pub async fn champion_promotion<C: ConnectionTrait>(
        &self,
        db: &C,
    ) -> Result<Option<ModelPromoted>, DbErr> {
        let key = quark_events::Alias::Champion.label();
        table::get(db, &self.table(), Entry::Alias, key).await
    }

    /// The promotion each alias (built-in or named) last moved with, oldest first.
    pub async fn alias_promotions<C: ConnectionTrait>(
        &self,
        db: &C,
    ) -> Result<Vec<ModelPromoted>, DbErr> {
        table::tagged(db, &self.table(), Entry::Alias, None).await
    }

    /// The champion with its model; none while there is no champion, or while its model is
    /// not known here yet (a promotion written before promotions carried the checkpoint, whose
    /// model.trained this projection has not folded).
    pub async fn champion<C: ConnectionTrait>(&self, db: &C) -> Result<Option<Champion>, DbErr> {
        let Some(promotion) = self.champion_promotion(db).await? else {
            return Ok(None);
        };
        Ok(self
            .model(db, promotion.model_id)
            .await?
            .map(|model| Champion { model, promotion }))
    }
}

/// A consumer that only folds the lineage events into its service's projection (consumer
/// group `name`), beside a handler that runs long jobs and must not hold the projection back.
pub struct Follower {
    pub name: String,
    pub lineage: Lineage,
}

#[async_trait]
impl Handler for Follower {
    fn name(&self) -> &str {
        &self.name
    }

    fn consumes(&self) -> Vec<EventKind> {
        EVENTS.to_vec()
    }

    async fn handle(&self, _: &Event) -> Result<Vec<Event>, HandlerError> {
        Ok(vec![])
    }

    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        self.lineage.apply(txn, event).await
    }
}
