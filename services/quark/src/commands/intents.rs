//! The router's intent classifier: trained at the gateway's first start from the labelled
//! intents `gateway.router.intents` names, into `gateway.router.model_dir`, and loaded from
//! there after.

use super::moderation::encoder_dir;
use anyhow::Context;
use quark_ml::classifier::ClassifierConfig;
use quark_ml::encoder::SentenceEncoder;
use quark_ml::intents::{self, IntentClassifier, IntentReport};
use quark_runtime::Settings;
use std::path::PathBuf;

fn model_dir(settings: &Settings) -> PathBuf {
    match settings.gateway.router.model_dir.as_str() {
        "" => settings.data_dir.join("intents"),
        dir => PathBuf::from(dir),
    }
}

/// The classifier, and whether it was trained now; none when no labelled intents are named.
pub fn open(settings: &Settings) -> anyhow::Result<Option<(IntentClassifier, IntentReport, bool)>> {
    let labelled = &settings.gateway.router.intents;
    if labelled.is_empty() {
        return Ok(None);
    }
    let encoder = SentenceEncoder::load(&encoder_dir(settings)?, quark_ml::device::select("cpu")?)?;
    let dir = model_dir(settings);
    if IntentClassifier::saved_in(&dir) {
        let (classifier, report) = IntentClassifier::load(&dir, encoder)?;
        return Ok(Some((classifier, report, false)));
    }
    let examples = intents::read_examples(std::path::Path::new(labelled))
        .with_context(|| "gateway.router.intents")?;
    let (training, held_out) = intents::split(examples);
    let (classifier, report) =
        IntentClassifier::train(encoder, &training, &held_out, &ClassifierConfig::default())?;
    // Written beside its place and renamed there, so a reader never finds half of one.
    let staging = dir.with_extension(format!("partial-{}", std::process::id()));
    std::fs::create_dir_all(&staging)?;
    classifier.save(&staging, &report)?;
    if std::fs::rename(&staging, &dir).is_err() {
        std::fs::remove_dir_all(&staging).ok();
    }
    Ok(Some((classifier, report, true)))
}
