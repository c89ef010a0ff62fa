//! The state the page shows, read from the bus and the database.

use quark_events::bus::{BusConfig, BusError, TopicState, inspect, positions};
use quark_events::codec::default_resolver;
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
    /// Alias → model id.
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
        let (states, letters) = {
            let bus = bus.clone();
            tokio::task::spawn_blocking(move || {
                let letters = quark_events::bus::dead_letters(&bus, default_resolver().as_ref());
                inspect(&bus).and_then(|states| Ok((states, letters?)))
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
        let aliases = quark_registry::aliases(db)
            .await?
            .into_iter()
            .map(|(alias, id)| (alias, id.to_string()))
            .collect();
        let moves = quark_registry::promotions(db)
            .await?
            .into_iter()
            .rev()
            .take(MOVES)
            .map(|p| Move {
                alias: p.alias,
                model_id: p.model_id,
                reason: p.reason,
                at_ms: p.promoted_at,
                operator: p.operator,
                note: p.note,
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

/// A topic with the lag of every consumer that has processed any of it.
fn topic(state: TopicState, positions: &[(String, String, i32, i64)]) -> Topic {
    Topic {
        messages: state.messages(),
        lag: state.lags(positions),
        topic: state.topic,
    }
}
