//! The router (step 7). A request that names `quark` is routed: the intent classifier reads
//! its prompt, the first rule of `gateway.router.rules` that takes the intent chooses the
//! alias (a weighted canary split may send it to another), a rule's fallback answers when
//! the chosen model cannot, and a share of requests is also answered by the shadow alias —
//! never shown, only published, so the evaluator can compare the two on production prompts.
//! The decision is recorded on the response event (`routing`). A request that names an
//! alias or a model id goes there, unrouted.

use crate::api::ApiError;
use crate::moderation::generate_screened;
use crate::served::{self, Exchange, new_request_id};
use crate::{Gateway, Served};
use quark_events::Routing;
use quark_ml::generate::GenerateOptions;
use quark_runtime::config::{RouteRule, RouterSettings};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// The model name that is routed.
pub const ROUTED: &str = "quark";

/// Where a routed request goes, and what else the rule says of it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Route {
    pub routing: Routing,
    pub fallback: Option<String>,
    /// The alias that also answers, unseen.
    pub shadow: Option<String>,
    pub retrieval: Option<bool>,
    pub max_tokens: Option<usize>,
}

/// The route of a request of intent `intent`, given two uniform draws in [0, 1): one for the
/// canary split, one for shadow traffic.
pub(crate) fn route(
    settings: &RouterSettings,
    intent: Option<(String, f64)>,
    canary_draw: f64,
    shadow_draw: f64,
) -> Route {
    let default = RouteRule::to("default", None, "champion");
    let rule = settings
        .rules
        .iter()
        .find(|r| {
            r.intent
                .as_ref()
                .is_none_or(|want| intent.as_ref().is_some_and(|(i, _)| i == want))
        })
        .unwrap_or(&default);
    let canary = rule.canary_share > 0.0 && canary_draw < rule.canary_share;
    let alias = match (&rule.canary_alias, canary) {
        (Some(canary_alias), true) => canary_alias.clone(),
        _ => rule.alias.clone(),
    };
    let shadow = (shadow_draw < settings.shadow_share && settings.shadow_alias.0 != alias)
        .then(|| settings.shadow_alias.0.clone());
    let (intent, intent_probability) = intent.unzip();
    Route {
        routing: Routing {
            intent,
            intent_probability,
            rule: rule.name.clone(),
            alias,
            canary,
            fell_back_from: None,
            shadow: shadow.clone(),
        },
        fallback: rule.fallback.clone(),
        shadow,
        retrieval: rule.retrieval,
        max_tokens: rule.max_tokens,
    }
}

impl Gateway {
    /// The route of a request whose prompt is `prompt`.
    pub(crate) async fn route(&self, prompt: &str) -> Route {
        let intent = match self.intents() {
            Some(intents) if !prompt.trim().is_empty() => {
                let prompt = prompt.to_string();
                let read = tokio::task::spawn_blocking(move || {
                    let classifier = intents.classifier.lock().unwrap_or_else(|e| e.into_inner());
                    classifier.classify(&prompt)
                })
                .await;
                match read {
                    Ok(Ok(intent)) => Some(intent),
                    Ok(Err(e)) => {
                        warn!(error = %e, "intent not read: routed by the default rule");
                        None
                    }
                    Err(e) => {
                        warn!(error = %e, "intent not read: routed by the default rule");
                        None
                    }
                }
            }
            _ => None,
        };
        route(
            &self.settings.router,
            intent,
            rand::random::<f64>(),
            rand::random::<f64>(),
        )
    }

    /// The model a request that names `model` gets: routed when it names `quark`.
    pub(crate) async fn choose(
        &self,
        model: &str,
        prompt: &str,
    ) -> Result<(Arc<Served>, Option<Route>), ApiError> {
        if model != ROUTED {
            return Ok((self.model_named(model).await?, None));
        }
        let mut route = self.route(prompt).await;
        let served = self.routed_model(&mut route).await?;
        Ok((served, Some(route)))
    }

    /// The model a route names, or its fallback's when that one cannot answer (recorded in
    /// the route).
    pub(crate) async fn routed_model(&self, route: &mut Route) -> Result<Arc<Served>, ApiError> {
        let chosen = self.model_named(&route.routing.alias).await;
        match (chosen, route.fallback.clone()) {
            (Err(e), Some(fallback)) if e.status.is_server_error() || e.status.as_u16() == 404 => {
                warn!(alias = %route.routing.alias, %fallback, error = %e.message, "falling back");
                let served = self.model_named(&fallback).await?;
                let failed = std::mem::replace(&mut route.routing.alias, fallback);
                route.routing.fell_back_from = Some(failed);
                Ok(served)
            }
            (chosen, _) => chosen,
        }
    }
}

/// A live request's work, as its shadow repeats it.
pub(crate) struct ShadowJob {
    pub alias: String,
    /// The model that answered live, and the prompt's ids in its tokenizer.
    pub live: Arc<Served>,
    pub ids: Vec<u32>,
    pub options: GenerateOptions,
    pub exchange: Exchange,
}

impl Gateway {
    /// Answers `job` with its shadow alias and publishes the answer (response.served with
    /// `shadow_of`); nobody sees it. A shadow that cannot run (the alias is missing, or its
    /// model reads another tokenizer's ids) is skipped.
    pub(crate) async fn shadow(self: Arc<Self>, job: ShadowJob) {
        let served = match self.model_named(&job.alias).await {
            Ok(served) if served.tokenizer_id == job.live.tokenizer_id => served,
            Ok(_) => {
                debug!(alias = %job.alias, "no shadow: the shadow model reads another tokenizer");
                return;
            }
            Err(e) => {
                debug!(alias = %job.alias, error = %e.message, "no shadow");
                return;
            }
        };
        let started = Instant::now();
        let engine = served.clone();
        let ShadowJob {
            ids, mut options, ..
        } = job;
        options.logprobs = None;
        let answered = tokio::task::spawn_blocking(move || {
            generate_screened(&engine.engine, &ids, &options, None, ("", false), |_| {
                ControlFlow::Continue(())
            })
        })
        .await;
        let Ok(Ok(answered)) = answered else {
            warn!(alias = %job.alias, "the shadow generation failed");
            return;
        };
        let mut exchange = job.exchange;
        let prefix = exchange
            .request_id
            .split('-')
            .next()
            .unwrap_or("cmpl")
            .to_string();
        exchange.shadow_of = Some(std::mem::replace(
            &mut exchange.request_id,
            new_request_id(&prefix),
        ));
        exchange.streamed = false;
        if let Some(routing) = exchange.routing.as_mut() {
            routing.alias = job.alias;
            routing.shadow = None;
        }
        let latency = started.elapsed().as_secs_f64() * 1e3;
        served::publish(&self, &exchange, served.model_id, &answered, latency).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_runtime::config::ShadowAlias;

    #[test]
    fn the_first_rule_that_takes_the_intent_routes_and_draws_split_it() {
        let mut default = RouteRule::to("rest", None, "champion");
        (default.canary_share, default.canary_alias) = (0.1, Some("challenger".into()));
        let settings = RouterSettings {
            rules: vec![RouteRule::to("code", Some("code"), "coder"), default],
            shadow_share: 0.25,
            shadow_alias: ShadowAlias("challenger".into()),
            ..RouterSettings::default()
        };
        let code = Some(("code".to_string(), 0.9));
        let r = route(&settings, code.clone(), 0.0, 0.9);
        assert_eq!(
            (r.routing.rule.as_str(), r.routing.alias.as_str()),
            ("code", "coder")
        );
        assert!(!r.routing.canary && r.shadow.is_none());
        assert_eq!(r.routing.intent_probability, Some(0.9));
        // Another intent, or none: the rule without one, split by the draw.
        let chat = Some(("chat".to_string(), 0.8));
        assert_eq!(
            route(&settings, chat.clone(), 0.05, 0.9).routing.alias,
            "challenger"
        );
        assert!(route(&settings, chat.clone(), 0.05, 0.9).routing.canary);
        assert_eq!(route(&settings, chat, 0.15, 0.9).routing.alias, "champion");
        assert_eq!(route(&settings, None, 0.5, 0.9).routing.rule, "rest");
        // Shadow traffic below its share, never to the alias that answers already.
        assert_eq!(
            route(&settings, code, 0.5, 0.1).shadow.as_deref(),
            Some("challenger")
        );
        assert_eq!(route(&settings, None, 0.05, 0.1).shadow, None);
        // No rules at all: the champion, as an unrouted request would get.
        let r = route(&RouterSettings::default(), None, 0.0, 0.0);
        assert_eq!(
            (r.routing.rule.as_str(), r.routing.alias.as_str()),
            ("default", "champion")
        );
        assert_eq!(r.shadow, None, "no shadow share, no shadow traffic");
    }
}
