//! Every model an alias points at, served at once.
//!
//! The registry announces every alias move as model.promoted (champion, challenger, previous,
//! and named aliases such as a domain model or a quantized variant), carrying the checkpoint.
//! The gateway keeps where each alias points, and keeps the models loaded within a memory
//! budget (`gateway.models_memory_mb`, weights): the champion is loaded at once and never
//! unloaded; any other model is loaded when it is promoted if it fits, or when a request
//! names it, unloading the least recently used others to make room. A model no alias points
//! at any more is unloaded. Requests in flight keep the model they started on.

use crate::api::ApiError;
use crate::router::ROUTED;
use crate::{Gateway, LINEAGE, Served};
use anyhow::Context;
use axum::http::StatusCode;
use quark_events::{Alias, Id, ModelPromoted};
use quark_lineage::Model;
use quark_ml::batch::Engine;
use quark_ml::checkpoint;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tracing::{info, warn};

const CHAMPION: &str = "champion";

/// Where an alias points, and since when.
#[derive(Clone)]
pub(crate) struct Pointed {
    pub model: Model,
    pub promoted_at: i64,
}

struct Loaded {
    served: Arc<Served>,
    bytes: u64,
    last_used: u64,
}

/// A model as `GET /v1/models` lists it.
pub(crate) struct Listed {
    pub model: Model,
    pub aliases: Vec<String>,
    pub loaded: bool,
}

#[derive(Default)]
pub(crate) struct Fleet {
    aliases: BTreeMap<String, Pointed>,
    loaded: HashMap<Id, Loaded>,
    clock: u64,
}

impl Fleet {
    /// Points `alias` at `model`, unless it moved later than `promoted_at` (an old promotion
    /// redelivered must not move it back). Returns whether it moved.
    fn point(&mut self, alias: &str, model: Model, promoted_at: i64) -> bool {
        if self
            .aliases
            .get(alias)
            .is_some_and(|p| p.promoted_at > promoted_at || p.model.model_id == model.model_id)
        {
            return false;
        }
        self.aliases
            .insert(alias.to_string(), Pointed { model, promoted_at });
        true
    }

    /// Removes `alias` if it moved before `at` and `unless` does not hold for its model.
    fn clear_before(&mut self, alias: &str, at: i64, unless: impl Fn(Id) -> bool) {
        if self
            .aliases
            .get(alias)
            .is_some_and(|p| p.promoted_at < at && !unless(p.model.model_id))
        {
            self.aliases.remove(alias);
        }
    }

    pub fn pointed(&self, alias: &str) -> Option<&Pointed> {
        self.aliases.get(alias)
    }

    /// The model `name` means: an alias, `quark` (the champion), or the id of a model an
    /// alias points at.
    fn find(&self, name: &str) -> Option<Model> {
        let alias = if name == ROUTED { CHAMPION } else { name };
        self.aliases
            .get(alias)
            .or_else(|| {
                self.aliases
                    .values()
                    .find(|p| p.model.model_id.to_string() == name)
            })
            .map(|p| p.model.clone())
    }

    fn get(&mut self, id: Id) -> Option<Arc<Served>> {
        self.clock += 1;
        let loaded = self.loaded.get_mut(&id)?;
        loaded.last_used = self.clock;
        Some(loaded.served.clone())
    }

    fn champion_id(&self) -> Option<Id> {
        self.aliases.get(CHAMPION).map(|p| p.model.model_id)
    }

    /// Unloads every model no alias points at, then the least recently used others (never
    /// the champion) until `bytes` more fit in `budget`. Returns whether they fit.
    fn make_room(&mut self, bytes: u64, budget: u64) -> bool {
        let aliased: Vec<Id> = self.aliases.values().map(|p| p.model.model_id).collect();
        self.loaded.retain(|id, _| aliased.contains(id));
        let champion = self.champion_id();
        loop {
            let used: u64 = self.loaded.values().map(|l| l.bytes).sum();
            if used + bytes <= budget {
                return true;
            }
            let victim = self
                .loaded
                .iter()
                .filter(|(id, _)| Some(**id) != champion)
                .min_by_key(|(_, l)| l.last_used)
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    info!(model = %id, "unloaded to make room");
                    self.loaded.remove(&id);
                }
                None => return false,
            }
        }
    }

    fn insert(&mut self, served: Arc<Served>, bytes: u64) {
        self.clock += 1;
        let last_used = self.clock;
        self.loaded.insert(
            served.model_id,
            Loaded {
                served,
                bytes,
                last_used,
            },
        );
    }

    pub fn listing(&self) -> Vec<Listed> {
        let mut listed: Vec<Listed> = Vec::new();
        for (alias, p) in &self.aliases {
            match listed
                .iter_mut()
                .find(|l| l.model.model_id == p.model.model_id)
            {
                Some(l) => l.aliases.push(alias.clone()),
                None => listed.push(Listed {
                    model: p.model.clone(),
                    aliases: vec![alias.clone()],
                    loaded: self.loaded.contains_key(&p.model.model_id),
                }),
            }
        }
        listed
    }
}

pub(crate) fn unknown_model(name: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("the model '{name}' does not exist; GET /v1/models lists the ones served"),
        param: Some("model"),
    }
}

impl Gateway {
    fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The champion, if it is loaded.
    pub fn served(&self) -> Option<Arc<Served>> {
        let mut fleet = self.fleet();
        let id = fleet.champion_id()?;
        fleet.get(id)
    }

    /// Model `id`, if it is loaded.
    pub(crate) fn loaded(&self, id: Id) -> Option<Arc<Served>> {
        self.fleet().loaded.get(&id).map(|l| l.served.clone())
    }

    pub(crate) fn pointed(&self, alias: &str) -> Option<Pointed> {
        self.fleet().pointed(alias).cloned()
    }

    pub(crate) fn listing(&self) -> Vec<Listed> {
        self.fleet().listing()
    }

    /// Serves `model` as champion, promoted at `promoted_at`.
    pub async fn serve(&self, model: &Model, promoted_at: i64) -> anyhow::Result<()> {
        let moved = self.fleet().point(CHAMPION, model.clone(), promoted_at);
        if moved {
            self.load(model, true).await?;
        }
        Ok(())
    }

    /// Follows one alias move. A new champion replaces `previous` (the registry names the new
    /// one next) and is no longer the challenger.
    pub async fn follow(&self, p: &ModelPromoted) -> anyhow::Result<()> {
        let Some(model) = Model::promoted(p) else {
            warn!(model = %p.model_id, "the promotion carries no checkpoint (written by an older registry): not served");
            return Ok(());
        };
        let at = p.header.occurred_at.0;
        let champion = p.alias == Alias::Champion;
        {
            let mut fleet = self.fleet();
            if !fleet.point(&p.alias_key(), model.clone(), at) {
                return Ok(());
            }
            if champion {
                fleet.clear_before("previous", at, |_| false);
                fleet.clear_before("challenger", at, |id| id != p.model_id);
            }
            // Unloads what no alias points at any more.
            fleet.make_room(0, u64::MAX);
        }
        if let Err(e) = self.load(&model, champion).await {
            if champion {
                return Err(e);
            }
            warn!(model = %p.model_id, alias = %p.alias_key(), error = %format!("{e:#}"), "not loaded now: loaded when a request names it");
        }
        Ok(())
    }

    /// Serves every alias this gateway last folded from model.promoted (at start-up).
    pub async fn serve_aliases(&self) -> anyhow::Result<()> {
        let promotions = LINEAGE.alias_promotions(&self.db).await?;
        if promotions.is_empty() {
            info!("no champion known yet: waiting for model.promoted");
        }
        for p in &promotions {
            self.follow(p).await?;
        }
        Ok(())
    }

    /// The loaded model `name` means (an alias, `quark`, or a model id), loading it if need be.
    pub(crate) async fn model_named(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        let model = {
            let fleet = self.fleet();
            if fleet.aliases.is_empty() {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no model is promoted yet: the first one is still training",
                ));
            }
            // The registry makes a first model challenger, then champion: between the two
            // moves the champion is on its way, not missing.
            if fleet.champion_id().is_none() && (name == CHAMPION || name == ROUTED) {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no champion is promoted yet: the first model is still being judged",
                ));
            }
            fleet.find(name)
        };
        let Some(model) = model else {
            return Err(unknown_model(name));
        };
        let champion = self.fleet().champion_id() == Some(model.model_id);
        self.load(&model, champion).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the model '{name}' cannot be loaded now: {e:#}"),
            )
        })
    }

    /// The loaded `model`, loading it first if need be. Only the champion loads beyond the
    /// memory budget.
    async fn load(&self, model: &Model, champion: bool) -> anyhow::Result<Arc<Served>> {
        if let Some(served) = self.fleet().get(model.model_id) {
            return Ok(served);
        }
        // One load at a time: two requests for one model load it once.
        let _loading = self.loading.lock().await;
        if let Some(served) = self.fleet().get(model.model_id) {
            return Ok(served);
        }
        let dir = self
            .store
            .get_dir(
                &model.checkpoint,
                &self.models_dir.join(model.model_id.to_string()),
            )
            .await?;
        let bytes = checkpoint::weights_bytes(&dir)?;
        let budget = self.settings.models_memory_mb << 20;
        if !self.fleet().make_room(bytes, budget) && !champion {
            anyhow::bail!(
                "its weights ({} MiB) do not fit in gateway.models_memory_mb ({} MiB) beside the champion",
                bytes >> 20,
                budget >> 20
            );
        }
        let device = quark_ml::device::select(&self.settings.device)?;
        let (gpt, tokenizer) = tokio::task::block_in_place(|| checkpoint::load(&dir, device))
            .with_context(|| format!("cannot load model {}", model.model_id))?;
        let served = Arc::new(Served {
            model_id: model.model_id,
            tokenizer_id: model.tokenizer_id,
            context: gpt.config.block_size as usize,
            engine: Engine::spawn(gpt, tokenizer.clone(), self.batch_limits())?,
            tokenizer,
            created: model.trained_at.0 / 1000,
        });
        self.fleet().insert(served.clone(), bytes);
        info!(model = %model.model_id, mib = bytes >> 20, "loaded");
        Ok(served)
    }
}
