//! The router's intent classifier, learnt where it is read. Its examples are the seed file
//! `gateway.router.intents` names and every intents dataset, oldest first: ingested
//! (`quark ingest --kind intents`) or released by the augmenter from feedback labelled
//! `intent:<name>`. A text labelled again takes its latest label, so feedback corrects the
//! seed. A new intents dataset retrains it (a linear layer over the frozen sentence encoder:
//! seconds on a CPU) and the new classifier replaces the old one; the held-out accuracy of
//! each is logged and shown by `/v1/admin/status`. A document of an intents dataset that is
//! forgotten (document.forgotten) retrains it without that document.

use crate::{Gateway, LINEAGE};
use anyhow::Context;
use quark_curate::store::read_documents;
use quark_events::bus::HandlerError;
use quark_events::{DatasetKind, DatasetPrepared, DocumentForgotten};
use quark_ml::classifier::ClassifierConfig;
use quark_ml::encoder::SentenceEncoder;
use quark_ml::intents::{self, IntentClassifier, IntentExample, IntentReport};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The classifier in use and how it scored on its held-out examples.
pub struct Intents {
    /// Its tensors are read by one thread at a time.
    pub classifier: Mutex<IntentClassifier>,
    pub report: IntentReport,
}

/// Trains and saves the classifier.
pub struct IntentLearner {
    encoder_dir: PathBuf,
    seed: Option<PathBuf>,
    model_dir: PathBuf,
}

impl IntentLearner {
    pub fn new(encoder_dir: PathBuf, seed: Option<PathBuf>, model_dir: PathBuf) -> IntentLearner {
        IntentLearner {
            encoder_dir,
            seed,
            model_dir,
        }
    }

    fn encoder(&self) -> anyhow::Result<SentenceEncoder> {
        Ok(SentenceEncoder::load(
            &self.encoder_dir,
            quark_ml::device::select("cpu")?,
        )?)
    }

    /// The classifier saved last, else one trained on the seed; none when there is neither.
    /// With it, whether it was trained now.
    pub fn open(&self) -> anyhow::Result<Option<(Intents, bool)>> {
        if IntentClassifier::saved_in(&self.model_dir) {
            let (classifier, report) = IntentClassifier::load(&self.model_dir, self.encoder()?)?;
            return Ok(Some((intents_of(classifier, report), false)));
        }
        if self.seed.is_none() {
            return Ok(None);
        }
        Ok(Some((self.learn(vec![])?, true)))
    }

    /// Trained on the seed and then `datasets`' examples, and saved over the last one.
    pub fn learn(&self, datasets: Vec<Vec<IntentExample>>) -> anyhow::Result<Intents> {
        let seed = match &self.seed {
            Some(path) => intents::read_examples(path).context("gateway.router.intents")?,
            None => vec![],
        };
        let examples = intents::merge(std::iter::once(seed).chain(datasets));
        let (training, held_out) = intents::split(examples);
        let (classifier, report) = IntentClassifier::train(
            self.encoder()?,
            &training,
            &held_out,
            &ClassifierConfig::default(),
        )?;
        // Written beside its place and swapped in, so a reader never finds half of one.
        let staging = self
            .model_dir
            .with_extension(format!("partial-{}", std::process::id()));
        std::fs::create_dir_all(&staging)?;
        classifier.save(&staging, &report)?;
        let old = self.model_dir.with_extension("old");
        std::fs::remove_dir_all(&old).ok();
        std::fs::rename(&self.model_dir, &old).ok();
        std::fs::rename(&staging, &self.model_dir).with_context(|| {
            format!("cannot save the classifier in {}", self.model_dir.display())
        })?;
        std::fs::remove_dir_all(&old).ok();
        Ok(intents_of(classifier, report))
    }
}

fn intents_of(classifier: IntentClassifier, report: IntentReport) -> Intents {
    Intents {
        classifier: Mutex::new(classifier),
        report,
    }
}

/// The labelled examples of a dataset's documents (each one record) but the `forgotten`; a
/// record that is not one is left out and counted.
fn examples_in(
    path: &Path,
    forgotten: &HashSet<String>,
) -> anyhow::Result<(Vec<IntentExample>, usize)> {
    let documents: Vec<_> = read_documents(path)?
        .into_iter()
        .filter(|d| !forgotten.contains(&d.id))
        .collect();
    let examples: Vec<IntentExample> = documents
        .iter()
        .filter_map(|d| serde_json::from_str(&d.text).ok())
        .collect();
    let unreadable = documents.len() - examples.len();
    Ok((examples, unreadable))
}

impl Gateway {
    /// Reads intents with `intents` from now on.
    pub fn attach_intents(&self, intents: Intents) {
        *self.intents.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(intents));
    }

    /// Learns from intents datasets from now on (once: a second call is ignored).
    pub fn attach_intent_learner(&self, learner: IntentLearner) {
        let _ = self.intent_learner.set(Arc::new(learner));
    }

    pub(crate) fn intents(&self) -> Option<Arc<Intents>> {
        self.intents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Retrains the classifier on every intents dataset this gateway has folded and `new`,
    /// leaving out the documents forgotten (and `forgotten_now`), and reads intents with it
    /// from now on. A classifier that cannot be learnt from them (one intent, say) is a
    /// permanent error: the one in use stays.
    pub(crate) async fn learn_intents(
        &self,
        new: Option<&DatasetPrepared>,
        forgotten_now: Option<&str>,
    ) -> Result<(), HandlerError> {
        let Some(learner) = self.intent_learner.get().cloned() else {
            warn!("an intents dataset, but no encoder to learn it with");
            return Ok(());
        };
        let mut datasets = self.intents_datasets().await?;
        if let Some(new) = new {
            datasets.retain(|d| d.dataset_id != new.dataset_id);
            datasets.push(new.clone());
        }
        let mut forgotten = LINEAGE
            .forgotten(&self.db)
            .await
            .map_err(HandlerError::transient)?;
        forgotten.extend(forgotten_now.map(str::to_string));
        let mut sets = Vec::new();
        for d in &datasets {
            for split in std::iter::once(&d.train).chain(&d.validation) {
                let path = self
                    .store
                    .fetch(split)
                    .await
                    .map_err(HandlerError::transient)?;
                let (examples, unreadable) =
                    examples_in(&path, &forgotten).map_err(HandlerError::permanent)?;
                if unreadable > 0 {
                    warn!(dataset = %d.dataset_id, unreadable, "records that are not {{text, intent}} left out");
                }
                sets.push(examples);
            }
        }
        let learnt = tokio::task::spawn_blocking(move || learner.learn(sets))
            .await
            .map_err(HandlerError::transient)?
            .map_err(|e| HandlerError::Permanent(format!("{e:#}")))?;
        info!(
            datasets = datasets.len(),
            intents = ?learnt.report.intents.iter().map(|s| &s.label).collect::<Vec<_>>(),
            trained_on = learnt.report.trained_on,
            held_out = learnt.report.held_out,
            accuracy = learnt.report.accuracy,
            "intent classifier retrained"
        );
        self.attach_intents(learnt);
        Ok(())
    }

    /// Retrains the classifier without a forgotten document, when it is in an intents
    /// dataset this gateway has folded.
    pub(crate) async fn forget_intent(&self, f: &DocumentForgotten) -> Result<(), HandlerError> {
        let ours = self
            .intents_datasets()
            .await?
            .iter()
            .any(|d| f.dataset_ids.contains(&d.dataset_id));
        if !ours {
            return Ok(());
        }
        self.learn_intents(None, Some(&f.document_id)).await
    }

    /// The intents datasets this gateway has folded, oldest first.
    async fn intents_datasets(&self) -> Result<Vec<DatasetPrepared>, HandlerError> {
        LINEAGE
            .datasets_of_kind(&self.db, DatasetKind::Intents)
            .await
            .map_err(HandlerError::transient)
    }
}
