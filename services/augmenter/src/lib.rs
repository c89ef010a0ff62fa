//! The augmenter: feedback becomes training and evaluation data.
//!
//! - a correction → an SFT pair (prompt, correction);
//! - a preferred response → a preference pair (prompt, chosen = preferred, rejected = served);
//! - a negative rating without a correction → an evaluation case (prompt, rejected = served);
//! - a rating up and one down of two responses to the same prompt → a preference pair
//!   ([`ratings`]);
//! - a label `intent:<name>` → a labelled request (text = prompt, intent = name) for the
//!   router's intent classifier, which the gateway retrains on each intents dataset.
//!
//! Text is PII-scrubbed; examples are keyed by their normalised content, so a replayed or
//! repeated feedback never adds an example twice. Examples wait in the database until the
//! policy releases them:
//! - `min_examples` pending corrections, preference pairs or labelled requests;
//! - a live regression of the champion (when a correction is pending);
//! - a retrain.requested that names no dataset ([`RetrainRequested::to_policy`]): `quark
//!   retrain` and the admin endpoint (manual), or [`schedule`] every `release_interval_secs`.
//!   Both release whatever is pending; a manual request with no pending correction asks
//!   for a fine-tuning on every SFT dataset released so far.
//!
//! While a training the threshold released is in flight, the threshold starts no other: its
//! corrections and pairs wait for the model.trained, which releases them ([`inflight`]).
//!
//! A release emits one dataset.prepared per kind (its `source_collections` are the feedback
//! ids the examples came from), a retrain.requested (sft) for the SFT dataset and, for the
//! preference dataset, one for a reward model and one (dpo) for the policy. With
//! `rloo_prompts`, the pairs' prompts and the most recent others of served traffic go out as a
//! prompts dataset and a retrain.requested (ppo, run by RLOO) optimises the champion on them against that reward
//! model. `min_examples` pending preference pairs are due on their own.
//!
//! Feedback from the gateway names only its request id: the augmenter joins it to the
//! response.served it folded ([`join`]); feedback that arrives before its response is parked
//! and completed by the response (whose arrival then counts as that feedback's: the release it
//! completes is caused by the feedback).
//!
//! The release is decided from the database and the event alone, the same way in
//! [`Handler::handle`] (which emits) and [`Handler::apply`] (which records), so it happens
//! exactly once.

pub mod inflight;
pub mod join;
mod migrations;
pub mod ratings;

pub use migrations::{AugmenterMigration, JoinMigration, TrainingsMigration};

use async_trait::async_trait;
use quark_curate::normalize::{exact_key, normalize};
use quark_curate::pii;
use quark_events::bus::{Handler, HandlerError, Publisher};
use quark_events::{
    DatasetKind, DatasetPrepared, Event, EventHeader, EventKind, FeedbackReceived, Id,
    RegressionSource, RetrainRequested, RetrainTrigger, RunKind,
};
use quark_runtime::ArtifactStore;
use quark_runtime::config::AugmentSettings;
use quark_runtime::db::insert_new;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, DatabaseTransaction, QueryOrder};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub const NAME: &str = "augmenter";

pub mod example {
    use sea_orm::entity::prelude::*;

    /// One example made from feedback, pending until a release puts it in a dataset.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "augmenter_examples")]
    pub struct Model {
        /// Kind and normalised content, hashed: the same example is stored once.
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        /// `sft`, `preference` or `eval`.
        pub kind: String,
        #[sea_orm(column_type = "Text")]
        pub record: String,
        pub feedback_id: String,
        pub received_at: i64,
        /// The dataset that released it; none while pending.
        pub dataset_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The examples one feedback gives, PII scrubbed.
pub fn examples(feedback: &FeedbackReceived) -> Vec<(DatasetKind, serde_json::Value)> {
    let clean = |text: &str| pii::scrub(text).0;
    let prompt = clean(&feedback.prompt);
    let served = clean(&feedback.response);
    let mut out = Vec::new();
    if let Some(correction) = &feedback.correction {
        out.push((
            DatasetKind::Sft,
            serde_json::json!({"prompt": prompt, "response": clean(correction)}),
        ));
    }
    // A preferred response that is empty or the served one again prefers nothing.
    if let Some(preferred) = feedback
        .preferred_response
        .as_deref()
        .filter(|p| !p.trim().is_empty() && p.trim() != feedback.response.trim())
    {
        out.push((
            DatasetKind::Preference,
            serde_json::json!({"prompt": prompt, "chosen": clean(preferred), "rejected": served}),
        ));
    }
    if let Some(intent) = feedback.intent_label() {
        out.push((
            DatasetKind::Intents,
            serde_json::json!({"text": prompt, "intent": intent}),
        ));
    }
    if feedback.correction.is_none() && feedback.is_negative() {
        out.push((
            DatasetKind::Eval,
            serde_json::json!({"prompt": prompt, "rejected": served}),
        ));
    }
    out
}

fn key(kind: DatasetKind, record: &serde_json::Value) -> String {
    let text = format!("{}\n{}", kind.name(), record);
    format!("{:032x}", exact_key(&normalize(&text)))
}

/// What an event does to the examples.
struct Decision {
    /// Examples not seen before.
    new: Vec<example::Model>,
    /// The examples released now, by kind, with the id of the dataset that takes them.
    release: Vec<(DatasetKind, Id, Vec<example::Model>)>,
    /// The SFT datasets to train on when nothing new is: those released before, for a manual
    /// request with no pending correction.
    earlier: Vec<Id>,
    trigger: RetrainTrigger,
    /// What the release counts as caused by: the event, or for a response that completes
    /// parked feedback, the last of that feedback.
    cause: EventHeader,
    /// Feedback whose response has not arrived: to park.
    park: Option<FeedbackReceived>,
    /// Feedback completed now (with its prompt and response): its plain ratings are kept.
    completed: Vec<FeedbackReceived>,
}

impl Decision {
    fn nothing(event: &Event) -> Decision {
        Decision {
            new: vec![],
            release: vec![],
            earlier: vec![],
            trigger: RetrainTrigger::Manual,
            cause: event.header().clone(),
            park: None,
            completed: vec![],
        }
    }
}

/// The examples of `feedback` not stored yet (nor among `new`).
async fn new_examples<C: ConnectionTrait>(
    db: &C,
    feedback: &[FeedbackReceived],
) -> Result<Vec<example::Model>, DbErr> {
    let mut new: Vec<example::Model> = Vec::new();
    for f in feedback {
        let mut candidates = examples(f);
        for (prompt, chosen, rejected) in ratings::pairs(db, f).await? {
            let record =
                serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected});
            candidates.push((DatasetKind::Preference, record));
        }
        for (kind, record) in candidates {
            let key = key(kind, &record);
            let seen = new.iter().any(|e| e.key == key)
                || example::Entity::find_by_id(key.clone())
                    .one(db)
                    .await?
                    .is_some();
            if !seen {
                new.push(example::Model {
                    key,
                    kind: kind.name().to_string(),
                    record: record.to_string(),
                    feedback_id: f.feedback_id.to_string(),
                    received_at: f.header.occurred_at.0,
                    dataset_id: None,
                });
            }
        }
    }
    Ok(new)
}

async fn decide<C: ConnectionTrait>(
    db: &C,
    event: &Event,
    settings: &AugmentSettings,
) -> Result<Decision, DbErr> {
    let mut cause = event.header().clone();
    let mut completed = vec![];
    let mut answering = None;
    let (new, trigger) = match event {
        Event::FeedbackReceived(f) => match join::complete(db, f).await? {
            Some(full) => {
                completed.push(full);
                (
                    new_examples(db, &completed).await?,
                    RetrainTrigger::FeedbackThreshold,
                )
            }
            None if examples(f).is_empty() => return Ok(Decision::nothing(event)),
            None => {
                let mut decision = Decision::nothing(event);
                decision.park = Some(f.clone());
                return Ok(decision);
            }
        },
        Event::ResponseServed(r) => {
            let parked = join::completed_by(db, r).await?;
            let Some(last) = parked.last() else {
                return Ok(Decision::nothing(event));
            };
            cause = last.header.clone();
            let new = new_examples(db, &parked).await?;
            completed = parked;
            (new, RetrainTrigger::FeedbackThreshold)
        }
        Event::EvalRegressed(r) if r.source == RegressionSource::LiveTelemetry => {
            (vec![], RetrainTrigger::Regression)
        }
        Event::RetrainRequested(r) if r.is_for_policy() => (vec![], r.trigger),
        // The end of a training this augmenter released: what waited on it may go now.
        Event::ModelTrained(m) => match inflight::answered_by(db, m).await? {
            Some(request) => {
                answering = Some(request);
                (vec![], RetrainTrigger::FeedbackThreshold)
            }
            None => return Ok(Decision::nothing(event)),
        },
        _ => return Ok(Decision::nothing(event)),
    };
    let mut pending = example::Entity::find()
        .filter(example::Column::DatasetId.is_null())
        .order_by_asc(example::Column::ReceivedAt)
        .order_by_asc(example::Column::Key)
        .all(db)
        .await?;
    pending.extend(new.iter().cloned());
    let count = |kind: DatasetKind| pending.iter().filter(|e| e.kind == kind.name()).count();
    let corrections = count(DatasetKind::Sft);
    let enough = settings.min_examples.max(1);
    // The threshold starts no training while one it released is in flight (see [`inflight`]).
    let held = trigger == RetrainTrigger::FeedbackThreshold
        && inflight::in_flight(
            db,
            event.header(),
            settings.training_timeout_secs,
            answering,
        )
        .await?;
    let trains = |kind: DatasetKind| matches!(kind, DatasetKind::Sft | DatasetKind::Preference);
    let due = match trigger {
        RetrainTrigger::FeedbackThreshold => [
            DatasetKind::Sft,
            DatasetKind::Preference,
            DatasetKind::Intents,
        ]
        .into_iter()
        .any(|kind| count(kind) >= enough && !(held && trains(kind))),
        RetrainTrigger::Regression => corrections > 0,
        RetrainTrigger::Schedule | RetrainTrigger::Manual => !pending.is_empty(),
    };
    let mut release = Vec::new();
    if due {
        for kind in [
            DatasetKind::Sft,
            DatasetKind::Preference,
            DatasetKind::Eval,
            DatasetKind::Intents,
        ]
        .into_iter()
        .filter(|kind| !(held && trains(*kind)))
        {
            let of_kind: Vec<_> = pending
                .iter()
                .filter(|e| e.kind == kind.name())
                .cloned()
                .collect();
            if !of_kind.is_empty() {
                let id = Id::derived(cause.event_id, kind.name());
                release.push((kind, id, of_kind));
            }
        }
    }
    let releases_sft = release.iter().any(|(kind, ..)| *kind == DatasetKind::Sft);
    let earlier = if trigger == RetrainTrigger::Manual && !releases_sft {
        released_sft(db).await?
    } else {
        vec![]
    };
    Ok(Decision {
        new,
        release,
        earlier,
        trigger,
        cause,
        park: None,
        completed,
    })
}

/// The SFT datasets released so far, oldest first.
async fn released_sft<C: ConnectionTrait>(db: &C) -> Result<Vec<Id>, DbErr> {
    let rows = example::Entity::find()
        .filter(example::Column::Kind.eq(DatasetKind::Sft.name()))
        .filter(example::Column::DatasetId.is_not_null())
        .order_by_asc(example::Column::ReceivedAt)
        .order_by_asc(example::Column::Key)
        .all(db)
        .await?;
    let mut ids: Vec<Id> = Vec::new();
    for id in rows
        .iter()
        .filter_map(|e| e.dataset_id.as_deref()?.parse().ok())
    {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Asks the policy for a release every `every` (the schedule trigger) until `shutdown`. With
/// several augmenters each asks; a request that finds nothing pending does nothing.
pub async fn schedule(publisher: Publisher, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the first release is due one interval after start.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let request = Event::RetrainRequested(RetrainRequested::to_policy(
            NAME,
            RetrainTrigger::Schedule,
            &format!("scheduled release (every {} s)", every.as_secs()),
        ));
        if let Err(e) = publisher.publish(&request).await {
            warn!(error = %e, "the scheduled release request was not published; next tick retries");
        }
    }
}

pub struct AugmenterService {
    store: Arc<ArtifactStore>,
    db: DatabaseConnection,
    settings: AugmentSettings,
}

impl AugmenterService {
    pub fn new(
        store: Arc<ArtifactStore>,
        db: DatabaseConnection,
        settings: AugmentSettings,
    ) -> Self {
        AugmenterService {
            store,
            db,
            settings,
        }
    }

    /// A dataset.prepared of `documents` (key, text, source) in the curator's document form,
    /// so the trainer and evaluator read every dataset alike.
    async fn dataset(
        &self,
        cause: &EventHeader,
        (kind, dataset_id): (DatasetKind, Id),
        documents: &[(String, String, String)],
        source_collections: Vec<Id>,
    ) -> Result<DatasetPrepared, HandlerError> {
        let mut jsonl = String::new();
        for (id, text, source) in documents {
            let document = serde_json::json!({"id": id, "text": text, "source": source});
            jsonl.push_str(&document.to_string());
            jsonl.push('\n');
        }
        let train = self
            .store
            .put(jsonl.as_bytes())
            .await
            .map_err(HandlerError::transient)?;
        let name = kind.name();
        let examples = documents.len() as i64;
        Ok(DatasetPrepared {
            header: EventHeader::caused_by(cause, NAME, name),
            dataset_id,
            name: format!("feedback-{name}"),
            kind,
            train,
            validation: None,
            rejects: None,
            train_examples: examples,
            validation_examples: 0,
            stats: HashMap::from([("examples".to_string(), examples)]),
            source_collections,
            parent_dataset_id: None,
        })
    }

    /// Prompts of served traffic, up to `rloo_prompts`, as a prompts dataset: those of the
    /// preference `pairs` first (their responses may not have joined yet), then the most
    /// recent others; none when policy optimisation is off.
    async fn served_prompts(
        &self,
        cause: &EventHeader,
        pairs: &[example::Model],
    ) -> Result<Option<DatasetPrepared>, HandlerError> {
        let limit = self.settings.rloo_prompts;
        if limit == 0 || !self.settings.reward_model {
            return Ok(None);
        }
        let of_pairs = pairs.iter().filter_map(|pair| {
            let record: serde_json::Value = serde_json::from_str(&pair.record).ok()?;
            Some(record["prompt"].as_str()?.to_string())
        });
        let prompts = join::recent_prompts(&self.db, cause.occurred_at.0, limit, of_pairs)
            .await
            .map_err(HandlerError::transient)?;
        if prompts.is_empty() {
            return Ok(None);
        }
        let kind = DatasetKind::Prompts;
        let documents: Vec<_> = prompts
            .into_iter()
            .map(|prompt| {
                let record = serde_json::json!({ "prompt": prompt });
                (key(kind, &record), record.to_string(), "served".to_string())
            })
            .collect();
        let id = Id::derived(cause.event_id, kind.name());
        Ok(Some(
            self.dataset(cause, (kind, id), &documents, vec![]).await?,
        ))
    }

    async fn release(&self, decision: Decision) -> Result<Vec<Event>, HandlerError> {
        let cause = &decision.cause;
        let mut events = Vec::new();
        for (kind, dataset_id, examples) in &decision.release {
            let documents: Vec<_> = examples
                .iter()
                .map(|e| {
                    let source = format!("feedback:{}", e.feedback_id);
                    (e.key.clone(), e.record.clone(), source)
                })
                .collect();
            let mut feedback_ids: Vec<Id> = examples
                .iter()
                .filter_map(|e| e.feedback_id.parse().ok())
                .collect();
            feedback_ids.dedup();
            let dataset = (*kind, *dataset_id);
            let prepared = self
                .dataset(cause, dataset, &documents, feedback_ids)
                .await?;
            events.push(Event::DatasetPrepared(prepared));
        }
        // The corrections released now, or else (a manual request) the earlier ones.
        let sft = decision
            .release
            .iter()
            .find(|(kind, ..)| *kind == DatasetKind::Sft)
            .map(|(_, id, examples)| {
                let reason = format!("{} corrections from feedback", examples.len());
                (vec![*id], reason)
            })
            .or_else(|| {
                let earlier = decision.earlier.clone();
                (!earlier.is_empty()).then(|| (earlier, "every SFT dataset released so far".into()))
            });
        let request = |slot: &str, run_kind: RunKind, dataset_ids: Vec<Id>, reason: String| {
            Event::RetrainRequested(RetrainRequested {
                header: EventHeader::caused_by(cause, NAME, slot),
                request_id: Id::derived(cause.event_id, slot),
                run_kind,
                base_model_id: None,
                dataset_ids,
                trigger: decision.trigger,
                reason,
            })
        };
        if let Some((dataset_ids, reason)) = sft {
            events.push(request("retrain", RunKind::Sft, dataset_ids, reason));
        }
        // Preference pairs released now teach the champion by DPO, and first a reward model,
        // by which the gate reads the policy's answers: the trainer takes requests in order,
        // and both share the cause's correlation, so its partition.
        if let Some((_, id, pairs)) = decision
            .release
            .iter()
            .find(|(kind, ..)| *kind == DatasetKind::Preference)
        {
            let reason = format!("{} preference pairs from feedback", pairs.len());
            if self.settings.reward_model {
                events.push(request(
                    "reward",
                    RunKind::Reward,
                    vec![*id],
                    reason.clone(),
                ));
            }
            events.push(request("align", RunKind::Dpo, vec![*id], reason.clone()));
            // And on prompts of served traffic, against that reward model (RLOO).
            if let Some(prompts) = self.served_prompts(cause, pairs).await? {
                let ids = vec![prompts.dataset_id];
                let reason = format!("{reason}, then {} served prompts", prompts.train_examples);
                events.push(Event::DatasetPrepared(prompts));
                events.push(request("optimise", RunKind::Ppo, ids, reason));
            }
        }
        Ok(events)
    }
}

#[async_trait]
impl Handler for AugmenterService {
    fn name(&self) -> &str {
        NAME
    }

    fn consumes(&self) -> Vec<EventKind> {
        vec![
            EventKind::FeedbackReceived,
            EventKind::EvalRegressed,
            EventKind::RetrainRequested,
            EventKind::ResponseServed,
            EventKind::ModelTrained,
        ]
    }

    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        let decision = decide(&self.db, event, &self.settings)
            .await
            .map_err(HandlerError::transient)?;
        if decision.release.is_empty() && decision.earlier.is_empty() {
            if let Event::RetrainRequested(r) = event
                && r.is_for_policy()
            {
                info!(request = %r.request_id, trigger = ?r.trigger, "nothing to release or train on");
            }
            return Ok(vec![]);
        }
        self.release(decision).await
    }

    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        let decision = decide(txn, event, &self.settings).await?;
        if let Some(f) = &decision.park {
            warn!(request = %f.request_id, feedback = %f.feedback_id, "feedback parked: the response it rates has not been seen yet");
            join::park(txn, f).await?;
        }
        match event {
            Event::ResponseServed(r) => join::record_response(txn, r).await?,
            Event::RetrainRequested(r) if inflight::is_released(r) => {
                inflight::record_request(txn, r).await?
            }
            Event::ModelTrained(m) => inflight::record_answer(txn, m).await?,
            _ => {}
        }
        for f in &decision.completed {
            ratings::record(txn, f).await?;
        }
        for row in decision.new {
            let example = example::ActiveModel {
                key: Set(row.key),
                kind: Set(row.kind),
                record: Set(row.record),
                feedback_id: Set(row.feedback_id),
                received_at: Set(row.received_at),
                dataset_id: Set(None),
            };
            insert_new(txn, example, [example::Column::Key]).await?;
        }
        for (_, dataset_id, examples) in decision.release {
            let keys: Vec<String> = examples.into_iter().map(|e| e.key).collect();
            example::Entity::update_many()
                .col_expr(
                    example::Column::DatasetId,
                    Expr::value(dataset_id.to_string()),
                )
                .filter(example::Column::Key.is_in(keys))
                .exec(txn)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
