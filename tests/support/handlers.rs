//! Consumers the tests script: one that holds each event until let go, one that refuses
//! every event until it is fixed.

use async_trait::async_trait;
use quark_events::bus::{Handler, HandlerError};
use quark_events::{Event, EventKind};
use quark_journal::JournalService;
use sea_orm::{DatabaseTransaction, DbErr};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

/// A consumer that holds each event until the test lets it go.
pub struct Held {
    pub gate: Semaphore,
}

#[async_trait]
impl Handler for Held {
    fn name(&self) -> &str {
        "held"
    }
    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::FeedbackReceived]
    }
    async fn handle(&self, _event: &Event) -> Result<Vec<Event>, HandlerError> {
        let permit = self.gate.acquire().await.expect("the gate stays open");
        permit.forget();
        Ok(vec![])
    }
}

/// A consumer with a bug until it is fixed: it refuses every feedback event as malformed.
pub struct Mending {
    pub broken: AtomicBool,
}

#[async_trait]
impl Handler for Mending {
    fn name(&self) -> &str {
        "mending"
    }
    fn consumes(&self) -> Vec<EventKind> {
        vec![EventKind::FeedbackReceived]
    }
    async fn handle(&self, _event: &Event) -> Result<Vec<Event>, HandlerError> {
        match self.broken.load(Ordering::SeqCst) {
            true => Err(HandlerError::Permanent(
                "ratings of 0 are not read yet".into(),
            )),
            false => Ok(vec![]),
        }
    }
    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        JournalService.apply(event, txn).await
    }
}
