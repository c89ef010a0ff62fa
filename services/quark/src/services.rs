//! The services this build of Quark can run: a closed list.

use quark_events::bus::Handler;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// Records every event and its causal chain in the database.
    Journal,
}

impl Service {
    pub const ALL: &'static [Service] = &[Service::Journal];

    pub fn handler(self) -> Arc<dyn Handler> {
        match self {
            Service::Journal => Arc::new(quark_journal::JournalService),
        }
    }
}
