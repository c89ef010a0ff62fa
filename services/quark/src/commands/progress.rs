//! The live progress display of `quark up`: one line per step of the loop, as it happens.

use quark_events::{Event, EventKind, decode};
use quark_runtime::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What an event means for the loop, in a few words.
pub fn describe(event: &Event) -> String {
    let short = |id: &dyn std::fmt::Display| id.to_string().chars().take(8).collect::<String>();
    match event {
        Event::DataCollected(e) => format!(
            "collected {} documents ({} bytes) from {}",
            e.documents, e.bytes, e.source_uri
        ),
        Event::DatasetPrepared(e) => format!(
            "dataset {} ({:?}): {} training, {} validation examples",
            short(&e.dataset_id),
            e.kind,
            e.train_examples,
            e.validation_examples
        ),
        Event::TokenizerTrained(e) => format!(
            "tokenizer {} trained: {} tokens",
            short(&e.tokenizer_id),
            e.vocab_size
        ),
        Event::ModelTrained(e) => format!(
            "model {} trained ({:?}, {} parameters, {} steps on {}): validation loss {}",
            short(&e.model_id),
            e.run_kind,
            e.shape.parameters,
            e.steps,
            e.device,
            e.metrics
                .get("val_loss")
                .map_or("-".into(), |l| format!("{l:.3}"))
        ),
        Event::EvalCompleted(e) => format!(
            "model {} passed the gate: perplexity {}",
            short(&e.model_id),
            e.metrics
                .get("perplexity")
                .map_or("-".into(), |p| format!("{p:.2}"))
        ),
        Event::EvalRegressed(e) => format!(
            "model {} regressed on {}",
            short(&e.model_id),
            e.regressions
                .iter()
                .map(|c| c.metric.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::ModelPromoted(e) => format!(
            "model {} is {:?} ({:?})",
            short(&e.model_id),
            e.alias,
            e.reason
        ),
        Event::FeedbackReceived(e) => format!("feedback on {}: rating {}", e.request_id, e.rating),
        Event::TelemetryReported(e) => format!(
            "traffic: {} requests, {} errors, p50 {:.0} ms, p99 {:.0} ms",
            e.requests, e.errors, e.latency_p50_ms, e.latency_p99_ms
        ),
        Event::RetrainRequested(e) => {
            format!("retraining requested ({:?}): {}", e.trigger, e.reason)
        }
        Event::IndexUpdated(e) => format!("index {} updated: {} rows", e.index_name, e.rows_total),
        Event::ResponseServed(e) => format!(
            "{} served by model {} in {:.0} ms: {} tokens",
            e.request_id,
            short(&e.model_id),
            e.latency_ms,
            e.completion_tokens
        ),
        Event::ForgetRequested(e) => format!("forgetting document {:?}", e.document_id),
        Event::DocumentForgotten(e) => format!(
            "document {:?} forgotten: it was in {} dataset(s)",
            e.document_id,
            e.dataset_ids.len()
        ),
        Event::PromotionRequested(e) => format!(
            "{} asks to {:?}{}",
            e.operator,
            e.action,
            e.model_id
                .map(|m| format!(" {}", short(&m)))
                .unwrap_or_default()
        ),
        Event::TrainingProgressed(e) => format!(
            "training {}: step {}/{}, loss {}",
            short(&e.job_id),
            e.step,
            e.max_steps,
            e.loss.map_or("-".into(), |l| format!("{l:.3}"))
        ),
        Event::DeadLetterRedriven(e) => format!(
            "dead letter {}:{}:{} sent back to {} by {}",
            e.dead_letter_topic, e.partition, e.offset, e.source_topic, e.operator
        ),
    }
}

/// Prints a line per new event on every topic until `shutdown`.
pub async fn follow(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let consumer: StreamConsumer = settings
        .bus
        .consumer_config("quark-progress", "quark-progress")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for topic in metadata.topics() {
        // Every served response is an event: the telemetry windows summarise them here; a
        // job's progress comes every second: its model.trained says how it ended.
        let shown = EventKind::from_topic(topic.name()).is_some_and(|kind| {
            !matches!(
                kind,
                EventKind::ResponseServed | EventKind::TrainingProgressed
            )
        });
        if shown {
            for partition in topic.partitions() {
                assignment.add_partition_offset(topic.name(), partition.id(), Offset::End)?;
            }
        }
    }
    consumer.assign(&assignment)?;
    let (registry, started) = (quark_events::codec::default_resolver(), Instant::now());
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = consumer.recv() => m?,
        };
        if let Ok(event) = decode(message.payload().unwrap_or_default(), registry.as_ref()) {
            let elapsed = started.elapsed().as_secs();
            eprintln!(
                "[quark {:>3}:{:02}] {:<18} {}",
                elapsed / 60,
                elapsed % 60,
                message.topic(),
                describe(&event)
            );
        }
    }
}
