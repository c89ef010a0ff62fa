//! The services this build of Quark can run: a closed list.

use quark_events::bus::Handler;
use quark_runtime::{LocalStore, Settings};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// Records every event and its causal chain in the database.
    Journal,
    /// data.collected → deduplicated, filtered, PII-scrubbed dataset → dataset.prepared.
    Curator,
}

impl Service {
    pub const ALL: &'static [Service] = &[Service::Journal, Service::Curator];

    pub fn handler(self, settings: &Settings) -> anyhow::Result<Arc<dyn Handler>> {
        Ok(match self {
            Service::Journal => Arc::new(quark_journal::JournalService),
            Service::Curator => Arc::new(quark_curator::CuratorService::new(
                Arc::new(LocalStore::new(settings.artifacts_root())?),
                &settings.data_dir,
                &settings.curate,
            )),
        })
    }
}
