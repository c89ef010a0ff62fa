//! The training progress bar of `quark up`: the trainer logs a `train` event every few steps
//! (step, max_steps, loss); this layer turns them into one bar on the terminal, whatever the
//! log filter, and clears it when the job ends.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

pub struct TrainingBar {
    target: fn() -> ProgressDrawTarget,
    bar: Mutex<Option<ProgressBar>>,
}

impl TrainingBar {
    /// A bar drawn on stderr (hidden when stderr is not a terminal).
    pub fn on_stderr() -> Self {
        Self::drawn_on(ProgressDrawTarget::stderr)
    }

    pub fn drawn_on(target: fn() -> ProgressDrawTarget) -> Self {
        TrainingBar {
            target,
            bar: Mutex::new(None),
        }
    }

    /// The current job's (position, length), if one is running.
    pub fn progress(&self) -> Option<(u64, u64)> {
        let bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        bar.as_ref()
            .map(|b| (b.position(), b.length().unwrap_or_default()))
    }

    fn update(&self, step: u64, max_steps: u64, loss: f64) {
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        let bar = slot.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(max_steps), (self.target)());
            bar.set_style(
                ProgressStyle::with_template("training {bar:30} {pos}/{len} steps · {msg} · {eta}")
                    .expect("a valid template"),
            );
            bar
        });
        bar.set_length(max_steps);
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.3}"));
        if step >= max_steps {
            bar.finish_and_clear();
            *slot = None;
        }
    }
}

#[derive(Default)]
struct TrainEvent {
    is_train: bool,
    step: Option<u64>,
    max_steps: Option<u64>,
    loss: Option<f64>,
}

impl Visit for TrainEvent {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "step" => self.step = Some(value),
            "max_steps" => self.max_steps = Some(value),
            _ => {}
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, value.max(0) as u64);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "loss" {
            self.loss = Some(value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.is_train |= field.name() == "message" && value == "train";
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.is_train |= field.name() == "message" && format!("{value:?}") == "train";
    }
}

impl<S: tracing::Subscriber> Layer<S> for TrainingBar {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !event.metadata().target().starts_with("quark_trainer") {
            return;
        }
        let mut fields = TrainEvent::default();
        event.record(&mut fields);
        if let (true, Some(step), Some(max_steps), Some(loss)) =
            (fields.is_train, fields.step, fields.max_steps, fields.loss)
        {
            self.update(step, max_steps, loss);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    /// Shares one bar between the subscriber and the test.
    struct Shared(Arc<TrainingBar>);

    impl<S: tracing::Subscriber> Layer<S> for Shared {
        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            self.0.on_event(event, ctx)
        }
    }

    #[test]
    fn train_events_move_the_bar_and_the_last_step_clears_it() {
        let bar = Arc::new(TrainingBar::drawn_on(ProgressDrawTarget::hidden));
        let subscriber = tracing_subscriber::registry().with(Shared(bar.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // Only the trainer's `train` events count.
            tracing::info!(target: "quark_gateway", step = 5u64, max_steps = 10u64, loss = 1.0, "train");
            assert_eq!(bar.progress(), None);
            tracing::info!(target: "quark_trainer", step = 4u64, max_steps = 10u64, loss = 2.5, "train");
            assert_eq!(bar.progress(), Some((4, 10)));
            tracing::info!(target: "quark_trainer", step = 8u64, max_steps = 10u64, loss = 2.0, "train");
            assert_eq!(bar.progress(), Some((8, 10)));
            tracing::info!(target: "quark_trainer", step = 10u64, max_steps = 10u64, loss = 1.9, "train");
            assert_eq!(bar.progress(), None, "finished");
        });
    }
}
