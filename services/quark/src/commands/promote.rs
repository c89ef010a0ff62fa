//! `quark promote MODEL [--alias NAME]` and `quark rollback`: alias moves by hand, asked of the
//! registry as promotion.requested with who asks and why. The command waits for the answer:
//! the model.promoted the request caused, or the request dead-lettered with why it could not
//! be carried out (an unknown model, nothing to roll back to).

use anyhow::{Context, bail};
use quark_events::bus::{Publisher, dlq_topic, ensure_topics, headers};
use quark_events::codec::default_resolver;
use quark_events::{
    Alias, Event, EventHeader, EventKind, Id, ModelPromoted, PromotionAction, PromotionRequested,
    decode,
};
use quark_runtime::Settings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::Duration;

/// How long the registry has to answer.
const ANSWER: Duration = Duration::from_secs(60);

/// The request for `action`, asked by `operator` (default: $USER) for `reason`.
pub fn request(
    action: PromotionAction,
    model_id: Option<Id>,
    alias_name: Option<String>,
    operator: Option<String>,
    reason: Option<String>,
) -> PromotionRequested {
    let operator = operator
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    PromotionRequested {
        header: EventHeader::root("quark-promote"),
        action,
        model_id,
        alias_name,
        operator,
        reason,
    }
}

/// Publishes `request` and waits for the registry's move of the alias it names.
pub async fn ask(
    settings: &Settings,
    request: PromotionRequested,
) -> anyhow::Result<ModelPromoted> {
    super::require_brokers(settings)?;
    ensure_topics(&settings.bus).await?;
    let answers = [
        EventKind::ModelPromoted.topic().to_string(),
        dlq_topic(EventKind::PromotionRequested.topic()),
    ];
    let consumer: StreamConsumer = settings
        .bus
        .consumer_config("quark-promote", "quark-promote")
        .set("enable.auto.commit", "false")
        .create()?;
    // From the ends they have now: the answer comes after the request.
    let mut assignment = TopicPartitionList::new();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| answers.iter().any(|a| a == t.name()))
    {
        for p in topic.partitions() {
            let (_, high) =
                consumer.fetch_watermarks(topic.name(), p.id(), Duration::from_secs(10))?;
            assignment.add_partition_offset(topic.name(), p.id(), Offset::Offset(high))?;
        }
    }
    consumer.assign(&assignment)?;
    let asked = request.header.event_id;
    let wanted = match request.alias_name {
        None => Alias::Champion,
        Some(_) => Alias::Named,
    };
    Publisher::new(&settings.bus, "quark-promote")?
        .publish(&Event::PromotionRequested(request))
        .await?;
    let resolver = default_resolver();
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| {
                format!("the registry has not answered request {asked} yet (is it running?)")
            })??;
        let payload = message.payload().unwrap_or_default();
        match decode(payload, resolver.as_ref()) {
            Ok(Event::ModelPromoted(p))
                if p.header.causation_id == Some(asked) && p.alias == wanted =>
            {
                return Ok(p);
            }
            Ok(Event::PromotionRequested(r)) if r.header.event_id == asked => {
                let error = message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == headers::ERROR))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                bail!("the registry refused: {error}");
            }
            _ => {}
        }
    }
}

/// One line for the move.
pub fn render(p: &ModelPromoted) -> String {
    format!(
        "{} → {} ({:?}{}){}",
        p.alias_key(),
        p.model_id,
        p.reason,
        p.previous_model_id
            .map(|m| format!(", was {m}"))
            .unwrap_or_default(),
        p.operator
            .as_ref()
            .map(|o| format!(" by {o}"))
            .unwrap_or_default()
    )
}
