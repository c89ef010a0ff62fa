//! `quark publish <topic>`: JSON in, validated against the topic's schema, Avro on the wire.
//! Every input is checked before anything is produced: one bad line produces nothing.

use anyhow::{Context, anyhow, bail};
use quark_events::bus::Publisher;
use quark_events::{Event, EventHeader, EventKind, encode};
use quark_runtime::Settings;
use serde_json::Value;

/// Parses one JSON object or JSON lines into events of `kind`. An object without `header`
/// gets a fresh root header from `producer`.
pub fn parse(kind: EventKind, input: &str, producer: &str) -> anyhow::Result<Vec<Event>> {
    let documents: Vec<Value> = match serde_json::from_str::<Value>(input) {
        Ok(Value::Array(items)) => items,
        Ok(single) => vec![single],
        Err(_) => input
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str(line).with_context(|| format!("line {}: invalid JSON", n + 1))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if documents.is_empty() {
        bail!("no event in the input");
    }
    documents
        .into_iter()
        .enumerate()
        .map(|(n, mut document)| {
            let object = document
                .as_object_mut()
                .ok_or_else(|| anyhow!("event {}: expected a JSON object", n + 1))?;
            if !object.contains_key("header") {
                object.insert(
                    "header".into(),
                    serde_json::to_value(EventHeader::root(producer))?,
                );
            }
            let event = Event::from_json(kind, document)
                .map_err(|e| anyhow!("event {}: does not match schemas/{kind}.avsc: {e}", n + 1))?;
            encode(&event).map_err(|e| anyhow!("event {}: {e}", n + 1))?;
            Ok(event)
        })
        .collect()
}

pub async fn publish(settings: &Settings, topic: &str, input: &str) -> anyhow::Result<usize> {
    let kind = EventKind::from_topic(topic).ok_or_else(|| {
        let known: Vec<_> = EventKind::ALL.iter().map(|k| k.topic()).collect();
        anyhow!("unknown topic {topic:?}; topics: {}", known.join(", "))
    })?;
    let events = parse(kind, input, "quark-cli")?;
    super::require_brokers(settings)?;
    let publisher = Publisher::new(&settings.bus, "quark-cli")?;
    publisher.publish_all(&events).await?;
    Ok(events.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_header_and_checks_the_schema() {
        let line = r#"{"feedback_id":"7d9f4c1e-8b1a-4a57-9d1e-0c6a1f2b3c4d","request_id":"r1","model_id":"m","prompt":"p","response":"r","rating":2,"correction":"c","preferred_response":null}"#;
        let events = parse(
            EventKind::FeedbackReceived,
            &format!("{line}\n{line}\n"),
            "me",
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].header().producer, "me");
        assert_ne!(events[0].header().event_id, events[1].header().event_id);
    }

    #[test]
    fn one_bad_event_rejects_the_whole_input() {
        let good = r#"{"feedback_id":"7d9f4c1e-8b1a-4a57-9d1e-0c6a1f2b3c4d","request_id":"r1","model_id":"m","prompt":"p","response":"r","rating":2}"#;
        let wrong_type = good.replace("\"rating\":2", "\"rating\":\"two\"");
        let error = parse(
            EventKind::FeedbackReceived,
            &format!("{good}\n{wrong_type}"),
            "me",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("event 2") && error.contains("feedback.received"),
            "{error}"
        );
        let unknown_field = good.replace("\"rating\":2", "\"rating\":2,\"ratng\":3");
        assert!(
            parse(EventKind::FeedbackReceived, &unknown_field, "me")
                .unwrap_err()
                .to_string()
                .contains("ratng")
        );
        let error = parse(EventKind::FeedbackReceived, "{not json", "me")
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid JSON"), "{error}");
        let bad_uuid = good.replace("7d9f4c1e-8b1a", "not-a-uuid");
        assert!(parse(EventKind::FeedbackReceived, &bad_uuid, "me").is_err());
    }
}
