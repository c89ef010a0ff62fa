//! The challenger on production prompts. The gateway answers a share of live requests with
//! the challenger too (shadow traffic, never shown): the live answer is a response.served
//! whose routing names the shadow, the shadow answer another whose `shadow_of` is the live
//! request. The judge pairs them in its own table; every `shadow_batch` pairs of one champion
//! and challenger → eval.completed with source `shadow_traffic` (it promotes nothing): how
//! often the newest reward model trained from the champion prefers the challenger's answer
//! (a tie is half), where there is one, and how often the two answered alike.
//!
//! A decision is a function of the event and the table as it stands, taken in `handle` and
//! again in `apply` (which records it), so a replay re-derives it exactly.

use crate::NAME;
use crate::suite::{Measurement, Sample};
use async_trait::async_trait;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{
    EvalCompleted, Event, EventHeader, EventKind, Id, RegressionSource, ResponseServed,
};
use quark_runtime::ArtifactStore;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseTransaction, QueryOrder, Schema};
use sea_orm_migration::prelude::{MigrationName, MigrationTrait, SchemaManager};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Share of pairs whose two answers were the same text.
pub const SAME_ANSWER: &str = "shadow_same_answer";
/// Pairs the report is taken over.
pub const PAIRS: &str = "shadow_pairs";

pub mod pair {
    use sea_orm::entity::prelude::*;

    /// A live answer the gateway shadowed, and once it arrives, the shadow answer.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "evaluator_shadow_pairs")]
    pub struct Model {
        /// The live request's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        pub live_model: String,
        #[sea_orm(column_type = "Text")]
        pub prompt: String,
        #[sea_orm(column_type = "Text")]
        pub live_answer: String,
        pub shadow_model: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub shadow_answer: Option<String>,
        pub served_at: i64,
        /// The report that took the pair in.
        pub evaluation_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub struct ShadowMigration;

impl MigrationName for ShadowMigration {
    fn name(&self) -> &str {
        "m0200_evaluator_shadow_pairs"
    }
}

#[async_trait]
impl MigrationTrait for ShadowMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let schema = Schema::new(manager.get_database_backend());
        manager
            .create_table(
                schema
                    .create_table_from_entity(pair::Entity)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}

pub struct ShadowJudge {
    store: Arc<ArtifactStore>,
    db: DatabaseConnection,
    models: PathBuf,
    /// Where the reward model judges (`evaluate.device`).
    device: tch::Device,
    batch: usize,
}

impl ShadowJudge {
    /// Reports every `settings.shadow_batch` pairs.
    pub fn new(
        store: Arc<ArtifactStore>,
        db: DatabaseConnection,
        data_dir: &std::path::Path,
        settings: &quark_runtime::config::EvaluateSettings,
    ) -> Result<Self, quark_ml::MlError> {
        Ok(ShadowJudge {
            store,
            db,
            models: data_dir.join("models"),
            device: quark_ml::device::select(&settings.device)?,
            batch: settings.shadow_batch.max(1),
        })
    }
}

/// The pairs a shadow answer completes a report with: the oldest `batch` complete pairs of
/// its champion and challenger no report took yet, once there are that many.
pub async fn decide<C: ConnectionTrait>(
    db: &C,
    event: &Event,
    batch: usize,
) -> Result<Option<Vec<pair::Model>>, DbErr> {
    let Event::ResponseServed(shadow) = event else {
        return Ok(None);
    };
    let Some(live) = shadow.shadow_of.as_ref() else {
        return Ok(None);
    };
    let Some(mut this) = pair::Entity::find_by_id(live.clone()).one(db).await? else {
        return Ok(None);
    };
    if this.evaluation_id.is_some() {
        return Ok(None);
    }
    let challenger = shadow.model_id.to_string();
    let mut pending = pair::Entity::find()
        .filter(pair::Column::LiveModel.eq(this.live_model.clone()))
        .filter(pair::Column::ShadowModel.eq(challenger.clone()))
        .filter(pair::Column::EvaluationId.is_null())
        .filter(pair::Column::RequestId.ne(live.clone()))
        .order_by_asc(pair::Column::ServedAt)
        .order_by_asc(pair::Column::RequestId)
        .all(db)
        .await?;
    (this.shadow_model, this.shadow_answer) = (Some(challenger), Some(shadow.response.clone()));
    pending.push(this);
    Ok((pending.len() >= batch).then(|| pending.into_iter().take(batch).collect()))
}

fn evaluation_id(shadow: &ResponseServed) -> Id {
    Id::derived(shadow.header.event_id, "shadow-evaluation")
}

/// The pairs as the reward-model verdict reads them: the challenger's answers as the
/// candidate's, the live ones as the champion's.
fn measurements(pairs: &[pair::Model]) -> (Measurement, Measurement) {
    let side = |answer: fn(&pair::Model) -> String| Measurement {
        metrics: Default::default(),
        samples: pairs
            .iter()
            .map(|p| Sample {
                kind: "shadow",
                prompt: p.prompt.clone(),
                output: answer(p),
                score: 0.0,
                flagged: vec![],
            })
            .collect(),
    };
    (
        side(|p| p.shadow_answer.clone().unwrap_or_default()),
        side(|p| p.live_answer.clone()),
    )
}

impl ShadowJudge {
    /// The report on `pairs`, which `shadow` completed.
    async fn report(
        &self,
        shadow: &ResponseServed,
        pairs: &[pair::Model],
    ) -> Result<Event, HandlerError> {
        let champion: Id = pairs[0]
            .live_model
            .parse()
            .map_err(HandlerError::permanent)?;
        let same = pairs
            .iter()
            .filter(|p| p.shadow_answer.as_deref() == Some(p.live_answer.as_str()))
            .count();
        let mut metrics = HashMap::from([
            (PAIRS.to_string(), pairs.len() as f64),
            (SAME_ANSWER.to_string(), same as f64 / pairs.len() as f64),
        ]);
        let judge = crate::reward_model(&self.db, champion).await?;
        if let Some(judge) = &judge {
            let (candidate, live) = measurements(pairs);
            let (models, device) = (&self.models, self.device);
            let rate =
                crate::win_rate(&self.store, models, device, judge, &candidate, &live).await?;
            metrics.extend(rate);
        }
        let body = serde_json::json!({
            "champion": champion,
            "challenger": shadow.model_id,
            "reward_model_id": judge.map(|j| j.model_id),
            "metrics": metrics,
            "pairs": pairs.iter().map(|p| serde_json::json!({"request_id": p.request_id, "prompt": p.prompt, "live": p.live_answer, "shadow": p.shadow_answer})).collect::<Vec<_>>(),
        });
        let report = self
            .store
            .put(&serde_json::to_vec_pretty(&body).map_err(HandlerError::permanent)?)
            .await
            .map_err(HandlerError::transient)?;
        Ok(Event::EvalCompleted(EvalCompleted {
            header: EventHeader::caused_by(&shadow.header, NAME, "shadow"),
            evaluation_id: evaluation_id(shadow),
            model_id: shadow.model_id,
            baseline_model_id: Some(champion),
            metrics,
            checks: vec![],
            report,
            source: Some(RegressionSource::ShadowTraffic),
        }))
    }
}

#[async_trait]
impl Handler for ShadowJudge {
    fn name(&self) -> &str {
        "evaluator-shadow"
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::ResponseServed]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        let (Event::ResponseServed(shadow), Some(pairs)) = (
            event,
            decide(&self.db, event, self.batch)
                .await
                .map_err(HandlerError::transient)?,
        ) else {
            return Ok(vec![]);
        };
        Ok(vec![self.report(shadow, &pairs).await?])
    }

    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        let Event::ResponseServed(served) = event else {
            return Ok(());
        };
        let decision = decide(txn, event, self.batch).await?;
        fold(txn, served).await?;
        if let Some(pairs) = decision {
            let ids: Vec<String> = pairs.into_iter().map(|p| p.request_id).collect();
            pair::Entity::update_many()
                .col_expr(
                    pair::Column::EvaluationId,
                    Expr::value(evaluation_id(served).to_string()),
                )
                .filter(pair::Column::RequestId.is_in(ids))
                .exec(txn)
                .await?;
        }
        Ok(())
    }
}

/// A shadowed live answer becomes a pair; a shadow answer completes its pair.
async fn fold<C: ConnectionTrait>(db: &C, served: &ResponseServed) -> Result<(), DbErr> {
    if let Some(live) = &served.shadow_of {
        pair::Entity::update_many()
            .col_expr(
                pair::Column::ShadowModel,
                Expr::value(served.model_id.to_string()),
            )
            .col_expr(
                pair::Column::ShadowAnswer,
                Expr::value(served.response.clone()),
            )
            .filter(pair::Column::RequestId.eq(live.clone()))
            .exec(db)
            .await?;
        return Ok(());
    }
    if served.routing.as_ref().is_none_or(|r| r.shadow.is_none()) {
        return Ok(());
    }
    let row = pair::ActiveModel {
        request_id: Set(served.request_id.clone()),
        live_model: Set(served.model_id.to_string()),
        prompt: Set(served.prompt.clone()),
        live_answer: Set(served.response.clone()),
        shadow_model: Set(None),
        shadow_answer: Set(None),
        served_at: Set(served.header.occurred_at.0),
        evaluation_id: Set(None),
    };
    pair::Entity::insert(row)
        .on_conflict(
            OnConflict::column(pair::Column::RequestId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(drop)
}
