//! training.progressed while a job runs: its step, loss and speed at most once a second (and
//! at its last step), sent without waiting for the broker so the job never waits on the bus.
//! The ids derive from the job's cause and the step, so a resumed job re-sends the same ones.

use quark_events::bus::Publisher;
use quark_events::{Event, EventHeader, RunKind, TrainingProgressed};
use quark_ml::train::Progress;
use std::time::{Duration, Instant};
use tracing::warn;

const EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Reporter {
    publisher: Publisher,
    runtime: tokio::runtime::Handle,
    cause: EventHeader,
    run_kind: RunKind,
    device: String,
    last: Option<Instant>,
}

impl Reporter {
    pub(crate) fn new(
        publisher: Publisher,
        cause: &EventHeader,
        run_kind: RunKind,
        device: String,
    ) -> Reporter {
        Reporter {
            publisher,
            runtime: tokio::runtime::Handle::current(),
            cause: cause.clone(),
            run_kind,
            device,
            last: None,
        }
    }

    pub(crate) fn report(&mut self, progress: &Progress, producer: &str) {
        if progress.loss.is_none() && progress.val_loss.is_none() {
            return;
        }
        let last_step = progress.step >= progress.max_steps;
        if !last_step && self.last.is_some_and(|at| at.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let event = Event::TrainingProgressed(TrainingProgressed {
            header: EventHeader::caused_by(
                &self.cause,
                producer,
                &format!("progress/{}", progress.step),
            ),
            job_id: self.cause.event_id,
            run_kind: self.run_kind,
            step: progress.step as i64,
            max_steps: progress.max_steps as i64,
            loss: progress.loss,
            val_loss: progress.val_loss,
            tokens_per_s: progress.tokens_per_s,
            device: self.device.clone(),
        });
        let publisher = self.publisher.clone();
        self.runtime.spawn(async move {
            if let Err(e) = publisher.publish(&event).await {
                warn!(error = %e, "training.progressed was not sent");
            }
        });
    }
}
