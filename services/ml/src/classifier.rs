//! A multi-label linear classifier over fixed features (sentence embeddings): one logistic
//! output per label, trained full-batch with AdamW on the binary cross-entropy, each label's
//! positives weighted by how rare they are (labelled safety and intent sets are small and
//! lopsided). What it knows of its labels is their names; what they mean is the caller's.

use crate::MlError;
use crate::checkpoint::read_json;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

const WEIGHTS: &str = "classifier.safetensors";
const CONFIG: &str = "classifier.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// A positive's weight is `negatives / positives` of its label, at most this.
    pub max_positive_weight: f64,
    pub seed: i64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            epochs: 300,
            lr: 3e-2,
            weight_decay: 1e-2,
            max_positive_weight: 3.0,
            seed: 0,
        }
    }
}

/// What a saved classifier says of itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Saved {
    labels: Vec<String>,
    dimension: usize,
    thresholds: Vec<f64>,
}

/// A label's reading on held-out examples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Held-out examples that carry the label.
    pub support: usize,
}

pub struct Classifier {
    pub labels: Vec<String>,
    /// A label is predicted when its probability reaches its threshold.
    pub thresholds: Vec<f64>,
    weight: Tensor,
    bias: Tensor,
}

/// `rows` as one `[n, d]` float tensor; every row must be `d` wide.
fn matrix(rows: &[Vec<f32>], d: usize) -> Result<Tensor, MlError> {
    if let Some(row) = rows.iter().find(|r| r.len() != d) {
        return Err(MlError::Data(format!(
            "a feature vector has {} values, the classifier reads {d}",
            row.len()
        )));
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_slice(&flat).view([rows.len() as i64, d as i64]))
}

impl Classifier {
    /// Trains on `features` (one vector per example) and `targets` (for each example, whether
    /// it carries each of `labels`).
    pub fn train(
        labels: Vec<String>,
        features: &[Vec<f32>],
        targets: &[Vec<bool>],
        config: &ClassifierConfig,
    ) -> Result<Classifier, MlError> {
        let (n, k) = (features.len(), labels.len());
        if n == 0 || k == 0 {
            return Err(MlError::Empty(
                "a classifier needs examples and labels".into(),
            ));
        }
        if targets.len() != n || targets.iter().any(|t| t.len() != k) {
            return Err(MlError::Data(format!(
                "{n} examples need {n} target rows of {k} labels"
            )));
        }
        let d = features[0].len();
        let x = matrix(features, d)?;
        let flat: Vec<f32> = targets.iter().flatten().map(|&t| t as u8 as f32).collect();
        let y = Tensor::from_slice(&flat).view([n as i64, k as i64]);
        let positives = y.sum_dim_intlist(0, false, Kind::Float);
        let negatives = positives.neg() + n as f64;
        let positive_weight =
            (negatives / positives.clamp_min(1.0)).clamp(1.0, config.max_positive_weight);
        tch::manual_seed(config.seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let linear = nn::linear(vs.root(), d as i64, k as i64, Default::default());
        let mut optimizer = nn::AdamW {
            wd: config.weight_decay,
            ..Default::default()
        }
        .build(&vs, config.lr)
        .map_err(|e| MlError::Config(e.to_string()))?;
        for _ in 0..config.epochs {
            let logits = x.apply(&linear);
            let loss = logits.binary_cross_entropy_with_logits::<&Tensor>(
                &y,
                None,
                Some(&positive_weight),
                tch::Reduction::Mean,
            );
            optimizer.backward_step(&loss);
        }
        Ok(Classifier {
            thresholds: vec![0.5; k],
            labels,
            weight: linear.ws.detach().copy(),
            bias: linear.bs.expect("a linear layer with bias").detach().copy(),
        })
    }

    /// Width of the features it reads.
    pub fn dimension(&self) -> usize {
        self.weight.size()[1] as usize
    }

    /// Each example's probability of each label, in `labels`' order.
    pub fn probabilities(&self, features: &[Vec<f32>]) -> Result<Vec<Vec<f64>>, MlError> {
        if features.is_empty() {
            return Ok(vec![]);
        }
        let x = matrix(features, self.dimension())?;
        let p = tch::no_grad(|| x.linear(&self.weight, Some(&self.bias)).sigmoid());
        Ok(Vec::<Vec<f64>>::try_from(p.to_kind(Kind::Double))?)
    }

    /// Whether each probability reaches its label's threshold.
    pub fn decide(&self, probabilities: &[f64]) -> Vec<bool> {
        probabilities
            .iter()
            .zip(&self.thresholds)
            .map(|(p, t)| p >= t)
            .collect()
    }

    /// Precision, recall and F1 of each label on `features` and their `targets`.
    pub fn score(
        &self,
        features: &[Vec<f32>],
        targets: &[Vec<bool>],
    ) -> Result<Vec<LabelScore>, MlError> {
        let predicted: Vec<Vec<bool>> = self
            .probabilities(features)?
            .iter()
            .map(|p| self.decide(p))
            .collect();
        Ok(self
            .labels
            .iter()
            .enumerate()
            .map(|(j, label)| {
                let pairs = predicted.iter().zip(targets).map(|(p, t)| (p[j], t[j]));
                binary_score(label, pairs)
            })
            .collect())
    }

    pub fn save(&self, dir: &Path) -> Result<(), MlError> {
        std::fs::create_dir_all(dir).map_err(|source| MlError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Tensor::write_safetensors(
            &[("weight", &self.weight), ("bias", &self.bias)],
            dir.join(WEIGHTS),
        )?;
        let saved = Saved {
            labels: self.labels.clone(),
            dimension: self.dimension(),
            thresholds: self.thresholds.clone(),
        };
        let path = dir.join(CONFIG);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&saved).expect("serialisable"),
        )
        .map_err(|source| MlError::Io { path, source })
    }

    pub fn load(dir: &Path) -> Result<Classifier, MlError> {
        let saved: Saved = read_json(&dir.join(CONFIG))?;
        let mut tensors: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join(WEIGHTS))?
                .into_iter()
                .collect();
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| MlError::Checkpoint(format!("{WEIGHTS} has no {name}")))
        };
        let (weight, bias) = (take("weight")?, take("bias")?);
        let (k, d) = (saved.labels.len() as i64, saved.dimension as i64);
        if weight.size() != [k, d] || bias.size() != [k] || saved.thresholds.len() != k as usize {
            return Err(MlError::Checkpoint(format!(
                "{} does not match {CONFIG}: {k} labels of {d} features",
                dir.display()
            )));
        }
        Ok(Classifier {
            labels: saved.labels,
            thresholds: saved.thresholds,
            weight: weight.to_kind(Kind::Float),
            bias: bias.to_kind(Kind::Float),
        })
    }
}

/// Precision, recall and F1 of (predicted, true) decisions; an empty side scores 0.
pub fn binary_score(label: &str, pairs: impl Iterator<Item = (bool, bool)>) -> LabelScore {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (predicted, truth) in pairs {
        match (predicted, truth) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (precision, recall) = (ratio(tp, tp + fp), ratio(tp, tp + fn_));
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    LabelScore {
        label: label.to_string(),
        precision,
        recall,
        f1,
        support: tp + fn_,
    }
}
