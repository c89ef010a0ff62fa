//! The gateway's router (step 7): which alias answers a request that names `quark`, by its
//! intent, with canary splits, a fallback and shadow traffic.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSettings {
    /// Seed examples, JSON lines `{"text": …, "intent": …}`, the intent classifier learns
    /// first, then every intents dataset (one in five held out and scored); empty: intents
    /// are read once an intents dataset has taught some.
    pub intents: String,
    /// The classifier's directory; empty: `<data_dir>/intents`. Trained there at the
    /// gateway's start when absent, saved there again at each retraining.
    pub model_dir: String,
    /// Tried in order: the first whose intent is the request's (or that names none) routes
    /// it. No rule matching: the champion.
    pub rules: Vec<RouteRule>,
    /// Share of routed requests (0 to 1) also answered by `shadow_alias`; the answer is
    /// never shown, only published (response.served, `shadow_of` the live request).
    pub shadow_share: f64,
    pub shadow_alias: ShadowAlias,
}

/// The alias shadow traffic goes to (`challenger` unless set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShadowAlias(pub String);

impl Default for ShadowAlias {
    fn default() -> Self {
        ShadowAlias("challenger".into())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Named on the response event.
    pub name: String,
    /// The intent it takes; none: any.
    #[serde(default)]
    pub intent: Option<String>,
    /// Who answers (champion, challenger, previous, a named alias, or a model id).
    pub alias: String,
    /// A canary: this share (0 to 1) of the rule's requests goes to `canary_alias` instead.
    #[serde(default)]
    pub canary_share: f64,
    #[serde(default)]
    pub canary_alias: Option<String>,
    /// Who answers when the chosen model cannot (it fails to load or to generate).
    #[serde(default)]
    pub fallback: Option<String>,
    /// Retrieval on or off for the rule's chat requests (the request's own choice otherwise).
    #[serde(default)]
    pub retrieval: Option<bool>,
    /// At most this many new tokens.
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

impl RouteRule {
    /// The rule `name` that sends `intent` (any, if none) to `alias`, and nothing more.
    pub fn to(name: &str, intent: Option<&str>, alias: &str) -> RouteRule {
        RouteRule {
            name: name.into(),
            intent: intent.map(str::to_string),
            alias: alias.into(),
            canary_share: 0.0,
            canary_alias: None,
            fallback: None,
            retrieval: None,
            max_tokens: None,
        }
    }
}

impl RouterSettings {
    /// What is wrong with the rules, if anything.
    pub fn check(&self) -> Result<(), String> {
        let share = |s: f64| (0.0..=1.0).contains(&s);
        if !share(self.shadow_share) {
            return Err(format!(
                "gateway.router.shadow_share {} is outside [0, 1]",
                self.shadow_share
            ));
        }
        for rule in &self.rules {
            if !share(rule.canary_share) {
                return Err(format!(
                    "gateway.router rule {}: canary_share {} is outside [0, 1]",
                    rule.name, rule.canary_share
                ));
            }
            if rule.canary_share > 0.0 && rule.canary_alias.is_none() {
                return Err(format!(
                    "gateway.router rule {}: canary_share without canary_alias",
                    rule.name
                ));
            }
        }
        Ok(())
    }
}
