//! `quark topics`: each topic's messages and end offsets, and each consumer's lag (from the
//! positions the consumer runner records in the database).

use crate::Migrator;
use quark_events::bus::{TopicState, inspect, positions};
use quark_runtime::{Settings, db};

/// A topic with the lag of every consumer that has processed any of it.
pub struct TopicReport {
    pub state: TopicState,
    pub lags: Vec<(String, i64)>,
}

pub async fn topics(settings: &Settings) -> anyhow::Result<Vec<TopicReport>> {
    super::require_brokers(settings)?;
    let states = inspect(&settings.bus)?;
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    let positions = positions(&database).await?;
    Ok(states
        .into_iter()
        .map(|state| TopicReport {
            lags: state.lags(&positions).into_iter().collect(),
            state,
        })
        .collect())
}

/// A plain-text table.
pub fn render(reports: &[TopicReport]) -> String {
    let mut out = format!(
        "{:<24} {:>10}  {:<28} {}\n",
        "TOPIC", "MESSAGES", "END OFFSETS", "CONSUMER LAG"
    );
    for report in reports {
        let ends: Vec<String> = report
            .state
            .partitions
            .iter()
            .map(|p| p.high.to_string())
            .collect();
        let lags: Vec<String> = report
            .lags
            .iter()
            .map(|(c, lag)| format!("{c}={lag}"))
            .collect();
        out += &format!(
            "{:<24} {:>10}  {:<28} {}\n",
            report.state.topic,
            report.state.messages(),
            ends.join(","),
            lags.join(" ")
        );
    }
    out
}
