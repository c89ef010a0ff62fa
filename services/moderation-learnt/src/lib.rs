//! The learnt moderator: each text embedded by the pretrained sentence encoder, then read by
//! a multi-label linear classifier (the ML core's) trained on the labelled safety set. Its
//! directory holds the classifier and `moderation.json` (the encoder it reads, the held-out
//! report).

use quark_ml::classifier::{Classifier, ClassifierConfig, LabelScore, binary_score};
use quark_ml::encoder::SentenceEncoder;
use quark_moderation::corpus::{self, Example};
use quark_moderation::{Moderation, ModerationError, Moderator};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

const REPORT: &str = "moderation.json";
/// Texts embedded per forward pass.
const BATCH: usize = 32;
/// One example in this many is held out of training and scored.
const HELD_OUT_EVERY: u64 = 5;

/// The labelled set of the Python environment `venv`, split into (training, held out): one
/// example in five held out, by its text.
pub fn held_out_split(venv: &Path) -> Result<(Vec<Example>, Vec<Example>), ModerationError> {
    let examples = corpus::load(&corpus::site_packages(venv)?)?;
    Ok(corpus::split(examples, HELD_OUT_EVERY))
}

/// How the classifier did on the held-out examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The encoder's name (its directory's).
    pub encoder: String,
    pub trained_on: usize,
    pub held_out: usize,
    pub categories: Vec<LabelScore>,
    /// Flagged in any category against harmful in any category.
    pub any: LabelScore,
}

pub struct LearntModerator {
    name: String,
    labels: Vec<String>,
    /// libtorch modules are not `Sync`: one reading at a time.
    model: Mutex<(SentenceEncoder, Classifier)>,
}

fn classifier_error(e: quark_ml::MlError) -> ModerationError {
    ModerationError::Classifier(e.to_string())
}

fn encoder_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    // A packaged model lives in the package's `model` directory: name it by the package.
    match name(dir).as_deref() {
        Some("model") => dir.parent().and_then(name),
        other => other.map(str::to_string),
    }
    .unwrap_or_else(|| "encoder".into())
}

impl LearntModerator {
    /// Trains on `training` and scores the result on `held_out` (see [`held_out_split`]).
    pub fn train(
        training: &[Example],
        held_out: &[Example],
        encoder_dir: &Path,
        config: &ClassifierConfig,
    ) -> Result<(LearntModerator, Report), ModerationError> {
        let encoder =
            SentenceEncoder::load(encoder_dir, tch::Device::Cpu).map_err(classifier_error)?;
        let labels: Vec<String> = corpus::LABELS.iter().map(|l| l.to_string()).collect();
        let embed = |set: &[Example]| {
            let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
            encoder.encode(&texts, BATCH).map_err(classifier_error)
        };
        let targets = |set: &[Example]| -> Vec<Vec<bool>> {
            set.iter().map(|e| e.targets(&labels)).collect()
        };
        let (train_x, test_x) = (embed(training)?, embed(held_out)?);
        let (train_y, test_y) = (targets(training), targets(held_out));
        let classifier =
            Classifier::train(labels, &train_x, &train_y, config).map_err(classifier_error)?;
        let categories = classifier
            .score(&test_x, &test_y)
            .map_err(classifier_error)?;
        let predicted = classifier
            .probabilities(&test_x)
            .map_err(classifier_error)?;
        let any = binary_score(
            "any",
            predicted
                .iter()
                .zip(&test_y)
                .map(|(p, t)| (classifier.decide(p).contains(&true), t.contains(&true))),
        );
        let report = Report {
            encoder: encoder_name(encoder_dir),
            trained_on: training.len(),
            held_out: held_out.len(),
            categories,
            any,
        };
        Ok((LearntModerator::new(encoder, classifier, &report), report))
    }

    fn new(encoder: SentenceEncoder, classifier: Classifier, report: &Report) -> LearntModerator {
        LearntModerator {
            name: format!("quark-moderation-{}", report.encoder),
            labels: classifier.labels.clone(),
            model: Mutex::new((encoder, classifier)),
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, (SentenceEncoder, Classifier)> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves the classifier and `report` to `dir`.
    pub fn save(&self, dir: &Path, report: &Report) -> Result<(), ModerationError> {
        self.model().1.save(dir).map_err(classifier_error)?;
        let path = dir.join(REPORT);
        let json = serde_json::to_vec_pretty(report).expect("serialisable");
        std::fs::write(&path, json).map_err(|e| ModerationError::Data {
            path,
            message: e.to_string(),
        })
    }

    /// The moderator saved in `dir`, reading with the encoder at `encoder_dir` (the one it was
    /// trained with: same name and width).
    pub fn load(
        dir: &Path,
        encoder_dir: &Path,
    ) -> Result<(LearntModerator, Report), ModerationError> {
        let path = dir.join(REPORT);
        let report: Report = quark_ml::checkpoint::read_json(&path).map_err(classifier_error)?;
        let classifier = Classifier::load(dir).map_err(classifier_error)?;
        let encoder =
            SentenceEncoder::load(encoder_dir, tch::Device::Cpu).map_err(classifier_error)?;
        if encoder_name(encoder_dir) != report.encoder
            || encoder.dimension() != classifier.dimension()
        {
            return Err(ModerationError::Classifier(format!(
                "{} was trained on {} embeddings ({} wide), not on {}'s",
                dir.display(),
                report.encoder,
                classifier.dimension(),
                encoder_dir.display()
            )));
        }
        Ok((LearntModerator::new(encoder, classifier, &report), report))
    }
}

fn has_words(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

impl LearntModerator {
    fn unread(&self) -> Moderation {
        Moderation {
            scores: self.labels.iter().map(|l| (l.clone(), 0.0)).collect(),
            flagged: vec![],
        }
    }
}

impl Moderator for LearntModerator {
    fn name(&self) -> &str {
        &self.name
    }

    fn categories(&self) -> &[String] {
        &self.labels
    }

    fn moderate(&self, texts: &[&str]) -> Result<Vec<Moderation>, ModerationError> {
        // A text without a letter or a digit (empty, punctuation) says nothing, and its
        // embedding is no sentence's: it is not read, and scores 0.
        let worded: Vec<&str> = texts.iter().copied().filter(|t| has_words(t)).collect();
        if worded.is_empty() {
            return Ok(texts.iter().map(|_| self.unread()).collect());
        }
        let model = self.model();
        let (encoder, classifier) = (&model.0, &model.1);
        let features = encoder.encode(&worded, BATCH).map_err(classifier_error)?;
        let probabilities = classifier
            .probabilities(&features)
            .map_err(classifier_error)?;
        let mut read = probabilities.iter().map(|p| Moderation {
            scores: self.labels.iter().cloned().zip(p.iter().copied()).collect(),
            flagged: self
                .labels
                .iter()
                .zip(classifier.decide(p))
                .filter(|(_, on)| *on)
                .map(|(l, _)| l.clone())
                .collect(),
        });
        Ok(texts
            .iter()
            .map(|t| match has_words(t) {
                true => read.next().expect("one reading per worded text"),
                false => self.unread(),
            })
            .collect())
    }
}

/// The moderator saved in `dir`; when there is none, one trained on the labelled set of the
/// Python environment `venv` and saved there (written beside `dir` and renamed into place,
/// so a reader never finds half of one). Returns whether it was trained now.
pub fn open(
    dir: &Path,
    encoder_dir: &Path,
    venv: Option<&Path>,
) -> Result<(LearntModerator, Report, bool), ModerationError> {
    if dir.join(REPORT).is_file() {
        let (moderator, report) = LearntModerator::load(dir, encoder_dir)?;
        return Ok((moderator, report, false));
    }
    let venv = venv.ok_or_else(|| ModerationError::Data {
        path: dir.to_path_buf(),
        message: "no moderation classifier here, and QUARK_VENV is not set to train one".into(),
    })?;
    let (training, held_out) = held_out_split(venv)?;
    let (moderator, report) = LearntModerator::train(
        &training,
        &held_out,
        encoder_dir,
        &ClassifierConfig::default(),
    )?;
    let staging = dir.with_extension(format!("partial-{}", std::process::id()));
    moderator.save(&staging, &report)?;
    let placed = std::fs::rename(&staging, dir);
    if placed.is_err() {
        // Another process placed one first: keep it.
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.join(REPORT).is_file() {
            return Err(ModerationError::Data {
                path: dir.to_path_buf(),
                message: format!("cannot place the trained classifier: {placed:?}"),
            });
        }
    }
    Ok((moderator, report, true))
}
