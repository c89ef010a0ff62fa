//! Quark's data collection, a plain library: no Kafka, no database. Documents come from
//! local files and directories ([`files`]), git repositories ([`git`]) and a polite web crawl
//! ([`crawl`]); HTML becomes its main text ([`html`]). Whatever cannot be read is recorded
//! with its reason and skipped: a run always completes.

pub mod crawl;
pub mod files;
pub mod git;
pub mod html;

pub use quark_curate::pipeline::Document;

/// Something left out, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skip {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Collected {
    pub documents: Vec<Document>,
    pub skipped: Vec<Skip>,
    /// The SPDX identifier of a repository's licence, when one was found.
    pub license: Option<String>,
}

impl Collected {
    fn skip(&mut self, source: impl Into<String>, reason: impl Into<String>) {
        let (source, reason) = (source.into(), reason.into());
        tracing::debug!(%source, %reason, "skipped");
        self.skipped.push(Skip { source, reason });
    }

    /// (source, reason) of every skip, for assertions.
    #[cfg(test)]
    pub(crate) fn skip_reasons(&self) -> Vec<(&str, &str)> {
        self.skipped
            .iter()
            .map(|s| (s.source.as_str(), s.reason.as_str()))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Invalid(String),
}
