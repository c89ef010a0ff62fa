//! The consumer runner: the one place that owns consuming, idempotency, retries, dead letters,
//! offset commits and shutdown. A service only implements [`Handler`].
//!
//! For each message, in order:
//! 1. decode it; bytes that do not decode, or an event on the wrong topic, go to `<topic>.dlq`;
//! 2. skip it if the ledger says this consumer already processed its event id;
//! 3. [`Handler::handle`] it, retrying transient errors with back-off; a permanent error or
//!    exhausted retries send it to the dead-letter topic;
//! 4. produce the events it returned and wait for the broker's acknowledgements;
//! 5. in one database transaction, record the event id in the ledger and [`Handler::apply`]
//!    its effects;
//! 6. only then store the offset for the next commit.
//!
//! A crash anywhere replays from the last commit: steps 2 and 5 make effects exactly-once, and
//! output events carry ids derived from their cause, so consumers downstream drop re-emitted
//! copies the same way.

use super::keepalive::KeepAlive;
use super::ledger;
use super::{BusConfig, BusError, Publisher, dlq_topic, headers, trace};
use crate::catalogue::{Event, EventKind};
use crate::codec::{self, SchemaResolver};
use crate::ids::Timestamp;
use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header};
use rdkafka::types::RDKafkaErrorCode;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What a service does with the events it consumes.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The service name: its consumer group and the producer name in the headers it emits.
    fn name(&self) -> &str;

    /// The event types it consumes.
    fn consumes(&self) -> Vec<EventKind>;

    /// Does the work for one event and returns the events it causes (headers made with
    /// [`EventHeader::caused_by`](crate::EventHeader::caused_by)). It may run more than once
    /// for the same event after a crash, so it must have no effects other than its returned
    /// events, [`Handler::apply`] and content-addressed artifacts.
    async fn handle(&self, event: &Event) -> Result<Vec<Event>, HandlerError> {
        let _ = event;
        Ok(Vec::new())
    }

    /// Database effects of the event, committed in the same transaction that marks it
    /// processed: they happen exactly once.
    async fn apply(&self, event: &Event, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        let _ = (event, txn);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: a dependency was unavailable, a resource was busy.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help: the event is invalid for this handler.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    /// A transient error from anything displayable (for `map_err`).
    pub fn transient(error: impl std::fmt::Display) -> Self {
        HandlerError::Transient(error.to_string())
    }

    /// A permanent error from anything displayable (for `map_err`).
    pub fn permanent(error: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(error.to_string())
    }

    pub fn label(&self) -> &'static str {
        match self {
            HandlerError::Transient(_) => "handler_transient",
            HandlerError::Permanent(_) => "handler_permanent",
        }
    }
}

/// Back-off for transient handler errors (and for broker or database outages, which are
/// retried until they end or shutdown is requested).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff)
    }
}

pub struct Runner {
    handler: Arc<dyn Handler>,
    bus: BusConfig,
    db: DatabaseConnection,
    resolver: Arc<dyn SchemaResolver>,
    retry: RetryPolicy,
}

/// Logs the partitions a consumer is given and loses: how the instances of one service share
/// its work is visible in their logs.
pub(super) struct GroupLog {
    pub(super) name: String,
}

impl ClientContext for GroupLog {}

impl ConsumerContext for GroupLog {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let describe = |list: &rdkafka::TopicPartitionList| {
            let parts: Vec<String> = list
                .elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect();
            parts.join(",")
        };
        match rebalance {
            Rebalance::Assign(list) => {
                info!(consumer = %self.name, partitions = %describe(list), "partitions assigned")
            }
            Rebalance::Revoke(list) => {
                info!(consumer = %self.name, partitions = %describe(list), "partitions revoked")
            }
            Rebalance::Error(error) => warn!(consumer = %self.name, %error, "rebalance failed"),
        }
    }
}

/// Why a message could not be processed; it goes to the dead-letter topic.
struct DeadLetter {
    label: &'static str,
    error: String,
}

/// Processing of a message stopped before its offset could be stored: shutdown was requested.
struct Interrupted;

impl Runner {
    pub fn new(handler: Arc<dyn Handler>, bus: BusConfig, db: DatabaseConnection) -> Self {
        Runner {
            handler,
            bus,
            db,
            resolver: codec::default_resolver(),
            retry: RetryPolicy::default(),
        }
    }

    /// Resolves writer schemas (default: the installed registry client, else the in-process
    /// [`codec::LocalRegistry`]).
    pub fn with_resolver(mut self, resolver: Arc<dyn SchemaResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Consumes until `shutdown` is cancelled, then finishes the message in flight, commits
    /// and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        let name = self.handler.name().to_string();
        let consumer: StreamConsumer<GroupLog> = self
            .bus
            .consumer_config(&name, &name)
            .create_with_context(GroupLog { name: name.clone() })?;
        let topics: Vec<&str> = self.handler.consumes().iter().map(|k| k.topic()).collect();
        consumer.subscribe(&topics)?;
        let publisher = Publisher::new(&self.bus, &name)?;
        info!(consumer = %name, ?topics, "consuming");
        let mut keep = KeepAlive::new(
            &consumer,
            Duration::from_millis(self.bus.max_poll_interval_ms),
        );

        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = keep.next() => match received {
                    Ok(message) => message,
                    Err(error) => {
                        warn!(consumer = %name, %error, "receive failed; retrying");
                        tokio::time::sleep(self.retry.initial_backoff).await;
                        continue;
                    }
                },
            };
            if self
                .process(&message, &publisher, &shutdown, &mut keep)
                .await
                .is_err()
            {
                break;
            }
            let (topic, partition, next) =
                (message.topic(), message.partition(), message.offset() + 1);
            if self
                .until_ok(&shutdown, || {
                    ledger::advance(&self.db, &name, topic, partition, next)
                })
                .await
                .is_err()
            {
                break;
            }
            // Fails when a rebalance took the partition during the job: its new owner
            // sees the event in the ledger (or handles it again, idempotently).
            if let Err(error) = consumer.store_offset_from_message(&message) {
                warn!(consumer = %name, %error, topic, partition, "cannot store the offset");
            }
        }

        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => warn!(consumer = %name, %error, "final commit failed"),
        }
        consumer.unsubscribe();
        info!(consumer = %name, "stopped");
        Ok(())
    }

    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        publisher: &Publisher,
        shutdown: &CancellationToken,
        keep: &mut KeepAlive<'_>,
    ) -> Result<(), Interrupted> {
        let name = self.handler.name();
        let span = info_span!("handle", consumer = %name, topic = message.topic(), partition = message.partition(), offset = message.offset(), event_id = tracing::field::Empty);
        let _ = span.set_parent(trace::extract(message.headers()));

        let event = match self.decode(message).await {
            Ok(event) => event,
            Err(dead) => {
                return self
                    .dead_letter(message, dead, publisher, shutdown)
                    .instrument(span)
                    .await;
            }
        };
        let event_id = event.header().event_id.to_string();
        span.record("event_id", event_id.as_str());

        async {
            if self
                .until_ok(shutdown, || ledger::seen(&self.db, name, &event_id))
                .await?
            {
                debug!("already processed; skipping");
                return Ok(());
            }
            let started = std::time::Instant::now();
            let outputs = match self.handle_with_retries(&event, shutdown, keep).await? {
                Ok(outputs) => outputs,
                Err(error) => {
                    let dead = DeadLetter {
                        label: error.label(),
                        error: error.to_string(),
                    };
                    return self.dead_letter(message, dead, publisher, shutdown).await;
                }
            };
            self.until_ok(shutdown, || publisher.publish_all(&outputs))
                .await?;
            self.until_ok(shutdown, || self.commit_effects(&event, &event_id))
                .await?;
            let labels = [
                ("consumer", name.to_string()),
                ("topic", event.kind().topic().to_string()),
            ];
            metrics::counter!("quark_events_handled_total", &labels).increment(1);
            metrics::histogram!("quark_handler_duration_seconds", &labels)
                .record(started.elapsed().as_secs_f64());
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Decodes, asking the resolver to look an unknown writer schema up (once) before giving up.
    async fn decode(&self, message: &BorrowedMessage<'_>) -> Result<Event, DeadLetter> {
        let payload = message.payload().unwrap_or_default();
        let mut decoded = codec::decode(payload, self.resolver.as_ref());
        if let Some(miss) = decoded.as_ref().err().and_then(codec::CodecError::miss)
            && self.resolver.refresh(miss).await
        {
            decoded = codec::decode(payload, self.resolver.as_ref());
        }
        let event = decoded.map_err(|e| DeadLetter {
            label: e.label(),
            error: e.to_string(),
        })?;
        if event.kind().topic() != message.topic() {
            return Err(DeadLetter {
                label: "wrong_topic",
                error: format!(
                    "a {} event does not belong on topic {}",
                    event.kind(),
                    message.topic()
                ),
            });
        }
        Ok(event)
    }

    async fn handle_with_retries(
        &self,
        event: &Event,
        shutdown: &CancellationToken,
        keep: &mut KeepAlive<'_>,
    ) -> Result<Result<Vec<Event>, HandlerError>, Interrupted> {
        let mut attempt = 0;
        loop {
            // On a task of its own, so that a handler that blocks its thread for a long job
            // does not stop the consumer from polling beside it.
            let (handler, owned) = (self.handler.clone(), event.clone());
            let job = tokio::spawn(
                async move { handler.handle(&owned).await }.instrument(tracing::Span::current()),
            );
            let outcome = keep.around(job).await.unwrap_or_else(|panicked| {
                Err(HandlerError::Permanent(format!(
                    "the handler panicked: {panicked}"
                )))
            });
            match outcome {
                Err(HandlerError::Transient(error)) if attempt + 1 < self.retry.max_attempts => {
                    warn!(attempt, %error, "transient handler error; retrying");
                    let labels = [
                        ("consumer", self.handler.name().to_string()),
                        ("topic", event.kind().topic().to_string()),
                    ];
                    metrics::counter!("quark_handler_retries_total", &labels).increment(1);
                    self.sleep(attempt, shutdown).await?;
                    attempt += 1;
                }
                result => return Ok(result),
            }
        }
    }

    async fn commit_effects(&self, event: &Event, event_id: &str) -> Result<(), BusError> {
        let txn = self.db.begin().await?;
        if ledger::record(&txn, self.handler.name(), event_id, Timestamp::now().0).await? {
            self.handler.apply(event, &txn).await?;
            txn.commit().await?;
        } else {
            txn.rollback().await?;
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        dead: DeadLetter,
        publisher: &Publisher,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        warn!(label = dead.label, error = %dead.error, "sending to the dead-letter topic");
        metrics::counter!(
            "quark_dead_letters_total",
            "consumer" => self.handler.name().to_string(),
            "topic" => message.topic().to_string(),
            "label" => dead.label,
        )
        .increment(1);
        let topic = dlq_topic(message.topic());
        let (partition, offset) = (
            message.partition().to_string(),
            message.offset().to_string(),
        );
        self.until_ok(shutdown, || {
            // The message's own headers (its type, its trace) stay, for a redrive.
            let own = message.headers().map(|h| h.detach());
            let headers = own
                .unwrap_or_default()
                .insert(Header {
                    key: headers::ERROR_LABEL,
                    value: Some(dead.label),
                })
                .insert(Header {
                    key: headers::ERROR,
                    value: Some(&dead.error),
                })
                .insert(Header {
                    key: headers::SOURCE_TOPIC,
                    value: Some(message.topic()),
                })
                .insert(Header {
                    key: headers::SOURCE_PARTITION,
                    value: Some(&partition),
                })
                .insert(Header {
                    key: headers::SOURCE_OFFSET,
                    value: Some(&offset),
                })
                .insert(Header {
                    key: headers::CONSUMER,
                    value: Some(self.handler.name()),
                });
            publisher.send(
                &topic,
                message.key(),
                message.payload().unwrap_or_default(),
                headers,
            )
        })
        .await
        .map(drop)
    }

    /// Runs `op` until it succeeds: broker and database outages are waited out, not turned
    /// into dead letters. Gives up only on shutdown.
    async fn until_ok<T, E, F, Fut>(
        &self,
        shutdown: &CancellationToken,
        mut op: F,
    ) -> Result<T, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: Into<BusError>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let error: BusError = error.into();
                    warn!(attempt, label = error.label(), %error, "infrastructure error; retrying");
                    self.sleep(attempt, shutdown).await?;
                    attempt += 1;
                }
            }
        }
    }

    async fn sleep(&self, attempt: u32, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        tokio::select! {
            _ = shutdown.cancelled() => Err(Interrupted),
            _ = tokio::time::sleep(self.retry.backoff(attempt)) => Ok(()),
        }
    }
}
