//! The curation pipeline over batches of documents: per-document work (normalisation,
//! language, quality, toxicity, PII, signatures) in parallel across cores, then deduplication
//! in input order against the persistent index. Memory is bounded by the batch, not the corpus
//! (the index aside).

use crate::dedup::DedupIndex;
use crate::filters::{self, QualityConfig, ToxicityScorer};
use crate::minhash::{MinHasher, Signature};
use crate::normalize::{exact_key, normalize};
use crate::pii;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub text: String,
    /// Where it came from (a path, a URL), for lineage and audits.
    #[serde(default)]
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurateConfig {
    pub quality: Option<QualityConfig>,
    /// Documents scoring above this are rejected; `None` turns the filter off.
    pub max_toxicity: Option<f64>,
    /// ISO 639-3 codes to keep; empty keeps every language. Documents whose language cannot be
    /// told reliably are kept.
    pub languages: Vec<String>,
    pub scrub_pii: bool,
    pub exact_dedup: bool,
    pub near_dedup: bool,
    /// Removals kept as samples in the stats, per reason.
    pub samples_per_reason: usize,
}

impl Default for CurateConfig {
    fn default() -> Self {
        CurateConfig {
            quality: Some(QualityConfig::default()),
            max_toxicity: Some(3.0),
            languages: vec!["eng".into()],
            scrub_pii: true,
            exact_dedup: true,
            near_dedup: true,
            samples_per_reason: 5,
        }
    }
}

/// What happened to one document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Outcome {
    Kept {
        document: Document,
    },
    Rejected {
        document: Document,
        reason: String,
        /// The accepted document it duplicates, for dedup rejections.
        #[serde(skip_serializing_if = "Option::is_none")]
        duplicate_of: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        estimated_jaccard: Option<f64>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub excerpt: String,
}

/// Counts of every filter's decisions and a few sample removals per reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub documents: u64,
    pub kept: u64,
    pub bytes_in: u64,
    pub bytes_kept: u64,
    pub rejected: BTreeMap<String, u64>,
    pub pii: BTreeMap<String, u64>,
    pub samples: BTreeMap<String, Vec<Sample>>,
}

/// Per-document results computed in parallel.
struct Prepared {
    document: Document,
    rejection: Option<String>,
    key: u128,
    signature: Signature,
    pii: BTreeMap<pii::PiiKind, usize>,
}

pub struct Curator {
    config: CurateConfig,
    hasher: MinHasher,
    toxicity: Box<dyn ToxicityScorer>,
    pub index: DedupIndex,
    pub stats: Stats,
}

impl Curator {
    pub fn new(
        config: CurateConfig,
        index: DedupIndex,
        toxicity: Box<dyn ToxicityScorer>,
    ) -> Curator {
        Curator {
            hasher: MinHasher::new(*index.config()),
            config,
            toxicity,
            index,
            stats: Stats::default(),
        }
    }

    fn prepare(&self, document: Document) -> Prepared {
        let text = normalize(&document.text);
        let rejection = if text.trim().is_empty() {
            Some("empty".to_string())
        } else {
            self.filter(&text)
        };
        let (text, pii) = if self.config.scrub_pii && rejection.is_none() {
            pii::scrub(&text)
        } else {
            (text, BTreeMap::new())
        };
        let signature = if self.config.near_dedup && rejection.is_none() {
            self.hasher.signature(&text)
        } else {
            vec![]
        };
        Prepared {
            key: exact_key(&text),
            document: Document { text, ..document },
            rejection,
            signature,
            pii,
        }
    }

    fn filter(&self, text: &str) -> Option<String> {
        if !self.config.languages.is_empty()
            && let Some(lang) = filters::language(text)
            && !self.config.languages.iter().any(|l| l == lang)
        {
            return Some(format!("language:{lang}"));
        }
        if let Some(reason) = self
            .config
            .quality
            .as_ref()
            .and_then(|q| filters::quality(text, q))
        {
            return Some(reason);
        }
        match self.config.max_toxicity {
            Some(max) if self.toxicity.score(text) > max => Some("toxicity".into()),
            _ => None,
        }
    }

    /// Curates one batch; outcomes come back in input order.
    pub fn curate(&mut self, batch: Vec<Document>) -> Vec<Outcome> {
        let prepared: Vec<Prepared> = batch.into_par_iter().map(|d| self.prepare(d)).collect();
        let mut outcomes = Vec::with_capacity(prepared.len());
        for p in prepared {
            self.stats.documents += 1;
            self.stats.bytes_in += p.document.text.len() as u64;
            let (reason, duplicate) = match p.rejection {
                Some(reason) => (Some(reason), None),
                None if self.config.exact_dedup && self.index.seen_exact(p.key) => {
                    (Some("duplicate:exact".to_string()), None)
                }
                None => match self
                    .config
                    .near_dedup
                    .then(|| self.index.near_duplicate(&p.signature))
                    .flatten()
                {
                    Some(found) => (Some("duplicate:near".to_string()), Some(found)),
                    None => (None, None),
                },
            };
            outcomes.push(match reason {
                None => {
                    for (kind, n) in &p.pii {
                        *self.stats.pii.entry(kind.name().to_string()).or_insert(0) += *n as u64;
                    }
                    self.stats.kept += 1;
                    self.stats.bytes_kept += p.document.text.len() as u64;
                    self.index.accept(p.document.id.clone(), p.key, p.signature);
                    Outcome::Kept {
                        document: p.document,
                    }
                }
                Some(reason) => {
                    *self.stats.rejected.entry(reason.clone()).or_insert(0) += 1;
                    let samples = self.stats.samples.entry(reason.clone()).or_default();
                    if samples.len() < self.config.samples_per_reason {
                        samples.push(Sample {
                            id: p.document.id.clone(),
                            excerpt: p.document.text.chars().take(200).collect(),
                        });
                    }
                    Outcome::Rejected {
                        document: p.document,
                        reason,
                        duplicate_of: duplicate.as_ref().map(|m| m.id.clone()),
                        estimated_jaccard: duplicate.map(|m| m.estimated_jaccard),
                    }
                }
            });
        }
        outcomes
    }
}
