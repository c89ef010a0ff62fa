//! What an event asks the trainer to train: a first pre-training, a full retrain from
//! scratch (after a document was forgotten), a fine-tuning of a base on SFT datasets, an
//! alignment of a base on preference datasets (DPO, a reward model), or a policy
//! optimisation of a base on prompts against its newest reward model (ppo, by RLOO). Every
//! plan carries the documents forgotten so far, which no training set may hold.

use crate::data::{Forgotten, Records, trains_on};
use crate::{LINEAGE, TrainerService, not_yet};
use quark_events::bus::HandlerError;
use quark_events::{Artifact, DatasetKind, DatasetPrepared, Event, Id, RetrainRequested, RunKind};
use quark_lineage::Model;
use tracing::info;

/// What a job trains on.
pub(crate) enum Plan {
    Pretrain {
        dataset: Box<DatasetPrepared>,
        tokenizer_id: Id,
        tokenizer: Artifact,
        forgotten: Forgotten,
    },
    Finetune {
        base: Box<Model>,
        datasets: Vec<DatasetPrepared>,
        /// Pre-training data mixed into the fine-tuning, so the model learns the new examples
        /// without forgetting the rest.
        rehearsal: Vec<DatasetPrepared>,
        /// The datasets' records not trained on this base already.
        records: Records,
        forgotten: Forgotten,
    },
    Align {
        run_kind: RunKind,
        base: Box<Model>,
        /// A ppo run's reward model: the newest one trained from the base.
        judge: Option<Box<Model>>,
        datasets: Vec<DatasetPrepared>,
        /// The datasets' pairs (or prompts) not learnt by this kind of run on this base already.
        records: Records,
        /// Pre-training data, whose held-out text DPO is held to as the gate holds it.
        pretraining: Vec<DatasetPrepared>,
        forgotten: Forgotten,
    },
    /// The base's weights to int8: no training, no data.
    Quantize { base: Box<Model> },
    /// A smaller student of the base, on the newest pre-training dataset.
    Distill {
        base: Box<Model>,
        dataset: Box<DatasetPrepared>,
        forgotten: Forgotten,
    },
}

impl TrainerService {
    pub(crate) async fn plan(&self, event: &Event) -> Result<Option<Plan>, HandlerError> {
        match event {
            Event::DatasetPrepared(d) if d.kind == DatasetKind::Pretrain => {
                let champion = LINEAGE
                    .champion_promotion(&self.db)
                    .await
                    .map_err(HandlerError::transient)?;
                if champion.is_some() {
                    info!(dataset = %d.dataset_id, "a champion exists: new pre-training data waits for a full retrain");
                    return Ok(None);
                }
                self.pretrain_plan(d.clone()).await
            }
            Event::RetrainRequested(r) if r.run_kind == RunKind::Quantize => {
                let base = self.base_of(r).await?;
                Ok(Some(Plan::Quantize {
                    base: Box::new(base),
                }))
            }
            Event::RetrainRequested(r) if r.run_kind == RunKind::Distill => {
                self.distill_plan(r).await
            }
            Event::RetrainRequested(r) if r.is_for_policy() => Ok(None),
            Event::RetrainRequested(r) if r.run_kind == RunKind::Pretrain => {
                self.retrain_plan(r).await
            }
            Event::RetrainRequested(r)
                if matches!(r.run_kind, RunKind::Dpo | RunKind::Reward | RunKind::Ppo) =>
            {
                self.align_plan(r).await
            }
            Event::RetrainRequested(r) => self.finetune_plan(r).await,
            _ => Ok(None),
        }
    }

    async fn forgotten(&self) -> Result<Forgotten, HandlerError> {
        let ids = LINEAGE
            .forgotten(&self.db)
            .await
            .map_err(HandlerError::transient)?;
        Ok(Forgotten::new(ids))
    }

    /// A model from scratch on `dataset`, with the tokenizer the curator trained on it.
    async fn pretrain_plan(&self, d: DatasetPrepared) -> Result<Option<Plan>, HandlerError> {
        if d.train_examples == 0 {
            info!(dataset = %d.dataset_id, "nothing was kept: nothing to pre-train on");
            return Ok(None);
        }
        let tokenizer = LINEAGE
            .tokenizer_for(&self.db, d.dataset_id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| not_yet(format!("the tokenizer of dataset {}", d.dataset_id)))?;
        Ok(Some(Plan::Pretrain {
            dataset: Box::new(d),
            tokenizer_id: tokenizer.tokenizer_id,
            tokenizer: tokenizer.artifact,
            forgotten: self.forgotten().await?,
        }))
    }

    /// A full retrain: pre-training from scratch on the first pre-training dataset named.
    /// One caused by an event (the registry's, after a document.forgotten) waits until that
    /// forgetting is folded here, so that the document is already left out.
    async fn retrain_plan(&self, request: &RetrainRequested) -> Result<Option<Plan>, HandlerError> {
        if let Some(cause) = request.header.causation_id {
            LINEAGE
                .forgetting(&self.db, cause)
                .await
                .map_err(HandlerError::transient)?
                .ok_or_else(|| not_yet(format!("the document.forgotten {cause}")))?;
        }
        for id in &request.dataset_ids {
            let dataset = LINEAGE
                .dataset(&self.db, *id)
                .await
                .map_err(HandlerError::transient)?
                .ok_or_else(|| not_yet(format!("dataset {id}")))?;
            if dataset.kind == DatasetKind::Pretrain {
                info!(dataset = %id, reason = %request.reason, "retraining from scratch");
                return self.pretrain_plan(dataset).await;
            }
        }
        Err(HandlerError::permanent(
            "a pretrain retrain.requested must name a pre-training dataset",
        ))
    }

    /// The model a request names, else the champion.
    async fn base_of(&self, request: &RetrainRequested) -> Result<Model, HandlerError> {
        let db = &self.db;
        let base_id = match request.base_model_id {
            Some(id) => id,
            None => {
                LINEAGE
                    .champion_promotion(db)
                    .await
                    .map_err(HandlerError::transient)?
                    .ok_or_else(|| not_yet("a champion".into()))?
                    .model_id
            }
        };
        LINEAGE
            .model(db, base_id)
            .await
            .map_err(HandlerError::transient)?
            .ok_or_else(|| not_yet(format!("model {base_id}")))
    }

    /// A student of the base a request names (the champion unless it names one), on the
    /// newest pre-training dataset.
    async fn distill_plan(&self, request: &RetrainRequested) -> Result<Option<Plan>, HandlerError> {
        let base = self.base_of(request).await?;
        let dataset = LINEAGE
            .datasets_of_kind(&self.db, DatasetKind::Pretrain)
            .await
            .map_err(HandlerError::transient)?
            .pop()
            .ok_or_else(|| not_yet("a pre-training dataset".into()))?;
        Ok(Some(Plan::Distill {
            base: Box::new(base),
            dataset: Box::new(dataset),
            forgotten: self.forgotten().await?,
        }))
    }

    /// The base a request names (the champion unless it names one) and its datasets of `kind`.
    async fn base_and_datasets(
        &self,
        request: &RetrainRequested,
        kind: DatasetKind,
    ) -> Result<(Model, Vec<DatasetPrepared>), HandlerError> {
        let db = &self.db;
        let base = self.base_of(request).await?;
        let mut datasets = Vec::new();
        for id in &request.dataset_ids {
            datasets.push(
                LINEAGE
                    .dataset(db, *id)
                    .await
                    .map_err(HandlerError::transient)?
                    .ok_or_else(|| not_yet(format!("dataset {id}")))?,
            );
        }
        datasets.retain(|d| d.kind == kind);
        if datasets.is_empty() {
            return Err(HandlerError::permanent(format!(
                "a {:?} run needs a {} dataset: the request names none",
                request.run_kind,
                kind.name()
            )));
        }
        Ok((base, datasets))
    }

    async fn finetune_plan(
        &self,
        request: &RetrainRequested,
    ) -> Result<Option<Plan>, HandlerError> {
        if request.run_kind != RunKind::Sft {
            return Err(HandlerError::permanent(format!(
                "this trainer fine-tunes with sft, aligns with dpo and reward, optimises with ppo (RLOO), and retrains with pretrain; {:?} runs are not supported",
                request.run_kind
            )));
        }
        let (base, datasets) = self.base_and_datasets(request, DatasetKind::Sft).await?;
        let skip = self.learnt_from(&base, RunKind::Sft).await?;
        let forgotten = self.forgotten().await?;
        let records = self.fresh_records(&datasets, &skip, &forgotten)?;
        if records.train.is_empty() {
            info!(base = %base.model_id, request = %request.header.event_id, "every correction named was trained on this base already: nothing to train");
            return Ok(None);
        }
        let rehearsal = LINEAGE
            .datasets_of_kind(&self.db, DatasetKind::Pretrain)
            .await
            .map_err(HandlerError::transient)?;
        Ok(Some(Plan::Finetune {
            base: Box::new(base),
            datasets,
            rehearsal,
            records,
            forgotten,
        }))
    }

    /// The newest reward model trained from `base` or, when it has none (a policy promoted
    /// since), from its nearest ancestor that has one.
    async fn judge_of(&self, base: &Model) -> Result<Model, HandlerError> {
        let mut model = base.clone();
        loop {
            let judge = LINEAGE
                .newest_child(&self.db, model.model_id, RunKind::Reward)
                .await
                .map_err(HandlerError::transient)?;
            if let Some(judge) = judge {
                return Ok(judge);
            }
            let parent = match model.parent_model_id {
                Some(id) => LINEAGE
                    .model(&self.db, id)
                    .await
                    .map_err(HandlerError::transient)?,
                None => None,
            };
            model = parent.ok_or_else(|| {
                not_yet(format!(
                    "a reward model trained from {} or its ancestors",
                    base.model_id
                ))
            })?;
        }
    }

    /// DPO or a reward model on the preference datasets named, or RLOO on the prompts
    /// datasets named; a pair (or prompt) this kind of run taught the base already is left
    /// out, and a request whose datasets hold none is refused. A ppo run waits for its base's
    /// reward model to be known here (the augmenter asks for it first).
    async fn align_plan(&self, request: &RetrainRequested) -> Result<Option<Plan>, HandlerError> {
        let kind = trains_on(request.run_kind);
        let (base, datasets) = self.base_and_datasets(request, kind).await?;
        let forgotten = self.forgotten().await?;
        let all = self.fresh_records(&datasets, &Default::default(), &forgotten)?;
        if all.train.is_empty() && all.validation.is_empty() {
            return Err(HandlerError::permanent(format!(
                "a {:?} run needs {} records: the datasets named hold none",
                request.run_kind,
                kind.name()
            )));
        }
        let judge = match request.run_kind {
            RunKind::Ppo => Some(Box::new(self.judge_of(&base).await?)),
            _ => None,
        };
        let skip = self.learnt_from(&base, request.run_kind).await?;
        let records = self.fresh_records(&datasets, &skip, &forgotten)?;
        if records.train.is_empty() {
            info!(base = %base.model_id, request = %request.header.event_id, run_kind = ?request.run_kind, "every pair named was learnt by this kind of run on this base already: nothing to train");
            return Ok(None);
        }
        let pretraining = LINEAGE
            .datasets_of_kind(&self.db, DatasetKind::Pretrain)
            .await
            .map_err(HandlerError::transient)?;
        Ok(Some(Plan::Align {
            run_kind: request.run_kind,
            base: Box::new(base),
            judge,
            datasets,
            records,
            pretraining,
            forgotten,
        }))
    }
}
