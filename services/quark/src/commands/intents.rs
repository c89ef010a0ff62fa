//! The router's intent classifier: the gateway's learner, on the seed examples
//! `gateway.router.intents` names, saved in `gateway.router.model_dir`.

use super::moderation::encoder_dir;
use quark_gateway::intents::IntentLearner;
use quark_runtime::Settings;
use std::path::PathBuf;

/// The learner; an error without the sentence encoder.
pub fn learner(settings: &Settings) -> anyhow::Result<IntentLearner> {
    let router = &settings.gateway.router;
    let model_dir = match router.model_dir.as_str() {
        "" => settings.data_dir.join("intents"),
        dir => PathBuf::from(dir),
    };
    let seed = (!router.intents.is_empty()).then(|| PathBuf::from(&router.intents));
    Ok(IntentLearner::new(encoder_dir(settings)?, seed, model_dir))
}
