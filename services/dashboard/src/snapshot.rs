//! The state the page shows, read from the bus (topics, dead letters, alias moves) and the
//! positions the consumer runner records.

use quark_events::bus::{
    BusConfig, BusError, TopicState, dead_letters, inspect, positions, read_topic,
};
use quark_events::codec::default_resolver;
use quark_events::{Event, EventKind, ModelPromoted, decode};
use rdkafka::Message;
use sea_orm::DatabaseConnection;
use serde::Serialize;
use std::collections::BTreeMap;

/// How many alias moves the page shows, the newest first.
const MOVES: usize = 20;

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub topics: Vec<Topic>,
    /// Dead letters not yet redriven.
    pub dead_letters: Vec<Letter>,
    /// Alias → the model its latest model.promoted points it at.
    pub aliases: BTreeMap<String, String>,
    pub moves: Vec<Move>,
}

#[derive(Debug, Serialize)]
pub struct Topic {
    pub topic: String,
    pub messages: i64,
    /// Consumer → messages it has not processed yet.
    pub lag: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize)]
pub struct Letter {
    pub id: String,
    pub source_topic: String,
    pub consumer: String,
    pub error_label: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct Move {
    pub alias: String,
    pub model_id: String,
    pub reason: String,
    pub at_ms: i64,
    pub operator: Option<String>,
    pub note: Option<String>,
}

impl Snapshot {
    pub async fn read(bus: &BusConfig, db: &DatabaseConnection) -> Result<Snapshot, BusError> {
        let (states, letters, moves) = {
            let bus = bus.clone();
            tokio::task::spawn_blocking(move || {
                let resolver = default_resolver();
                let letters = dead_letters(&bus, resolver.as_ref())?;
                let moves = promotions(&bus, resolver.as_ref())?;
                Ok::<_, BusError>((inspect(&bus)?, letters, moves))
            })
            .await
            .unwrap_or_else(|panicked| panic!("reading the bus panicked: {panicked}"))?
        };
        let positions = positions(db).await?;
        let topics = states.into_iter().map(|s| topic(s, &positions)).collect();
        let dead_letters = letters
            .into_iter()
            .filter(|l| l.redelivered.is_none())
            .map(|l| Letter {
                id: l.id,
                source_topic: l.source_topic,
                consumer: l.consumer,
                error_label: l.error_label,
                error: l.error,
            })
            .collect();
        let aliases = moves
            .iter()
            .map(|p| (p.alias_key(), p.model_id.to_string()))
            .collect();
        let moves = moves
            .iter()
            .rev()
            .take(MOVES)
            .map(|p| Move {
                alias: p.alias_key(),
                model_id: p.model_id.to_string(),
                // As the event spells it (gate_passed, rollback, manual, trained).
                reason: serde_json::to_value(p.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                at_ms: p.header.occurred_at.0,
                operator: p.operator.clone(),
                note: p.note.clone(),
            })
            .collect();
        Ok(Snapshot {
            topics,
            dead_letters,
            aliases,
            moves,
        })
    }
}

/// Every alias move on the bus, in the order they happened.
fn promotions(
    bus: &BusConfig,
    resolver: &dyn quark_events::SchemaResolver,
) -> Result<Vec<ModelPromoted>, BusError> {
    let mut moves: Vec<ModelPromoted> = read_topic(bus, EventKind::ModelPromoted.topic())?
        .iter()
        .filter_map(
            |m| match decode(m.payload().unwrap_or_default(), resolver) {
                Ok(Event::ModelPromoted(p)) => Some(p),
                _ => None,
            },
        )
        .collect();
    moves.sort_by_key(|p| (p.header.occurred_at.0, p.header.event_id.to_string()));
    Ok(moves)
}

/// A topic with the lag of every consumer that has processed any of it.
fn topic(state: TopicState, positions: &[(String, String, i32, i64)]) -> Topic {
    Topic {
        messages: state.messages(),
        lag: state.lags(positions),
        topic: state.topic,
    }
}
