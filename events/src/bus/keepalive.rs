//! Keeps a consumer in its group while a handler works for minutes or hours.
//!
//! A Kafka consumer that does not poll for `max.poll.interval.ms` is taken out of its group
//! and its partitions (with the message in hand) go to another member. So when a handler
//! runs longer than a moment, the runner pauses every assigned partition and goes on
//! polling: the group sees a live member, no new messages are fetched, and after the job
//! the partitions resume from the message after the last one handed out. A message that
//! slips through before the pause takes effect is held and processed next, in order.

use super::runner::GroupLog;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;
use tracing::{info, warn};

/// How long a handler may run before its consumer pauses and polls beside it.
const GRACE: Duration = Duration::from_secs(1);

pub(super) struct KeepAlive<'a> {
    consumer: &'a StreamConsumer<GroupLog>,
    held: VecDeque<BorrowedMessage<'a>>,
    poll_every: Duration,
}

impl<'a> KeepAlive<'a> {
    /// Polls at least every `max_poll_interval / 10` while a long job runs.
    pub fn new(consumer: &'a StreamConsumer<GroupLog>, max_poll_interval: Duration) -> Self {
        KeepAlive {
            consumer,
            held: VecDeque::new(),
            poll_every: (max_poll_interval / 10).clamp(Duration::from_millis(10), GRACE),
        }
    }

    /// The next message: a held one whose partition is still ours, else a new one.
    pub async fn next(&mut self) -> rdkafka::error::KafkaResult<BorrowedMessage<'a>> {
        while let Some(message) = self.held.pop_front() {
            if self.still_assigned(&message) {
                return Ok(message);
            }
        }
        self.consumer.recv().await
    }

    /// Awaits `work`; if it takes longer than a moment, pauses the assignment and polls
    /// until it ends, then resumes.
    pub async fn around<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(GRACE.min(self.poll_every)) => {}
        }
        let consumer = self.consumer;
        let name = consumer.context().name.clone();
        info!(consumer = %name, "long job: pausing the assignment and polling beside it");
        self.pause();
        let done = loop {
            tokio::select! {
                done = &mut work => break done,
                polled = tokio::time::timeout(self.poll_every, consumer.recv()) => match polled {
                    // Fetched before the pause took effect, or from a newly assigned partition.
                    Ok(Ok(message)) => {
                        self.held.push_back(message);
                        self.pause();
                    }
                    Ok(Err(error)) => warn!(consumer = %name, %error, "poll during a long job failed"),
                    Err(_) => {}
                },
            }
        };
        self.resume();
        info!(consumer = %name, "long job done: assignment resumed");
        done
    }

    fn pause(&self) {
        if let Ok(assignment) = self.consumer.assignment()
            && let Err(error) = self.consumer.pause(&assignment)
        {
            warn!(%error, "cannot pause the assignment");
        }
    }

    fn resume(&self) {
        if let Ok(assignment) = self.consumer.assignment()
            && let Err(error) = self.consumer.resume(&assignment)
        {
            warn!(%error, "cannot resume the assignment");
        }
    }

    fn still_assigned(&self, message: &BorrowedMessage<'_>) -> bool {
        self.consumer.assignment().is_ok_and(|assignment| {
            assignment
                .find_partition(message.topic(), message.partition())
                .is_some()
        })
    }
}
