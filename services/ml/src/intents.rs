//! The intent classifier the router reads: a request's text embedded by the pretrained
//! sentence encoder, then read by the linear classifier ([`crate::classifier`]), one output
//! per intent; the intent is the most probable one. Trained on labelled examples (JSON lines
//! `{"text": …, "intent": …}`), one in five held out by its text and scored.

use crate::MlError;
use crate::checkpoint::read_json;
use crate::classifier::{Classifier, ClassifierConfig, LabelScore, binary_score};
use crate::encoder::SentenceEncoder;
use serde::{Deserialize, Serialize};
use std::path::Path;

const REPORT: &str = "intents.json";
/// Texts embedded per forward pass.
const BATCH: usize = 32;
/// One example in this many is held out of training and scored.
const HELD_OUT_EVERY: u64 = 5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentExample {
    pub text: String,
    pub intent: String,
}

/// The labelled examples of a JSON-lines file; a bad line is an error that names it.
pub fn read_examples(path: &Path) -> Result<Vec<IntentExample>, MlError> {
    let text = std::fs::read_to_string(path).map_err(|source| MlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|e| MlError::Data(format!("{} line {}: {e}", path.display(), n + 1)))
        })
        .collect()
}

/// Every example of `sets` once per text, in order: a text labelled again takes its latest
/// label (a label from feedback corrects the one it was first given).
pub fn merge(sets: impl IntoIterator<Item = Vec<IntentExample>>) -> Vec<IntentExample> {
    let mut merged: Vec<IntentExample> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for example in sets.into_iter().flatten() {
        match at.get(&example.text) {
            Some(&i) => merged[i].intent = example.intent,
            None => {
                at.insert(example.text.clone(), merged.len());
                merged.push(example);
            }
        }
    }
    merged
}

/// (training, held out): an example is held out when the FNV-1a hash of its text says so, so
/// the split does not move when examples are added.
pub fn split(examples: Vec<IntentExample>) -> (Vec<IntentExample>, Vec<IntentExample>) {
    let fnv = |text: &str| {
        text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    examples
        .into_iter()
        .partition(|e| fnv(&e.text) % HELD_OUT_EVERY != 0)
}

/// How the classifier did on the held-out examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentReport {
    pub trained_on: usize,
    pub held_out: usize,
    /// Held-out examples whose most probable intent is their label.
    pub accuracy: f64,
    pub intents: Vec<LabelScore>,
}

pub struct IntentClassifier {
    encoder: SentenceEncoder,
    classifier: Classifier,
}

impl IntentClassifier {
    /// Trains on `training` and scores the result on `held_out`.
    pub fn train(
        encoder: SentenceEncoder,
        training: &[IntentExample],
        held_out: &[IntentExample],
        config: &ClassifierConfig,
    ) -> Result<(IntentClassifier, IntentReport), MlError> {
        let mut labels: Vec<String> = training.iter().map(|e| e.intent.clone()).collect();
        labels.sort();
        labels.dedup();
        if labels.len() < 2 {
            return Err(MlError::Data(
                "an intent classifier needs two intents or more".into(),
            ));
        }
        let targets = |set: &[IntentExample]| -> Vec<Vec<bool>> {
            set.iter()
                .map(|e| labels.iter().map(|l| *l == e.intent).collect())
                .collect()
        };
        let features = embed(&encoder, training)?;
        let classifier = Classifier::train(labels.clone(), &features, &targets(training), config)?;
        let intents = IntentClassifier {
            encoder,
            classifier,
        };
        let predicted = intents.classify_all(held_out.iter().map(|e| e.text.as_str()))?;
        let hits = predicted
            .iter()
            .zip(held_out)
            .filter(|((intent, _), e)| *intent == e.intent)
            .count();
        let scores = labels
            .iter()
            .map(|label| {
                let pairs = predicted
                    .iter()
                    .zip(held_out)
                    .map(|((intent, _), e)| (intent == label, e.intent == *label));
                binary_score(label, pairs)
            })
            .collect();
        let report = IntentReport {
            trained_on: training.len(),
            held_out: held_out.len(),
            accuracy: hits as f64 / held_out.len().max(1) as f64,
            intents: scores,
        };
        Ok((intents, report))
    }

    pub fn intents(&self) -> &[String] {
        &self.classifier.labels
    }

    /// The most probable intent of each text, with its probability.
    pub fn classify_all<'a>(
        &self,
        texts: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<(String, f64)>, MlError> {
        let texts: Vec<&str> = texts.collect();
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let features = self.encoder.encode(&texts, BATCH)?;
        let probabilities = self.classifier.probabilities(&features)?;
        Ok(probabilities
            .iter()
            .map(|p| {
                let (best, probability) = p
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .expect("a classifier has labels");
                (self.classifier.labels[best].clone(), *probability)
            })
            .collect())
    }

    pub fn classify(&self, text: &str) -> Result<(String, f64), MlError> {
        Ok(self.classify_all(std::iter::once(text))?.remove(0))
    }

    /// Saves the classifier and `report` to `dir`.
    pub fn save(&self, dir: &Path, report: &IntentReport) -> Result<(), MlError> {
        self.classifier.save(dir)?;
        let path = dir.join(REPORT);
        let json = serde_json::to_vec_pretty(report).expect("serialisable");
        std::fs::write(&path, json).map_err(|source| MlError::Io { path, source })
    }

    /// The classifier saved in `dir`, reading with `encoder` (the one it was trained with).
    pub fn load(
        dir: &Path,
        encoder: SentenceEncoder,
    ) -> Result<(IntentClassifier, IntentReport), MlError> {
        let report: IntentReport = read_json(&dir.join(REPORT))?;
        let classifier = Classifier::load(dir)?;
        if encoder.dimension() != classifier.dimension() {
            return Err(MlError::Checkpoint(format!(
                "{} reads {}-wide embeddings, the encoder writes {}",
                dir.display(),
                classifier.dimension(),
                encoder.dimension()
            )));
        }
        Ok((
            IntentClassifier {
                encoder,
                classifier,
            },
            report,
        ))
    }

    /// Whether `dir` holds a saved classifier.
    pub fn saved_in(dir: &Path) -> bool {
        dir.join(REPORT).is_file()
    }
}

fn embed(encoder: &SentenceEncoder, set: &[IntentExample]) -> Result<Vec<Vec<f32>>, MlError> {
    let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
    encoder.encode(&texts, BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(text: &str, intent: &str) -> IntentExample {
        IntentExample {
            text: text.into(),
            intent: intent.into(),
        }
    }

    #[test]
    fn a_text_labelled_again_keeps_its_place_and_takes_the_latest_label() {
        let seed = vec![example("a", "chat"), example("b", "code")];
        let ingested = vec![example("c", "billing"), example("a", "question")];
        let feedback = vec![example("a", "billing"), example("d", "travel")];
        assert_eq!(
            merge([seed, ingested, feedback]),
            vec![
                example("a", "billing"),
                example("b", "code"),
                example("c", "billing"),
                example("d", "travel"),
            ]
        );
    }
}
