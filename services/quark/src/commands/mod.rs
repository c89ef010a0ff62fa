//! One module per `quark` sub-command.

pub mod compare;
pub mod corpus;
pub mod dashboard;
pub mod dlq;
pub mod generate;
pub mod ingest;
pub mod intents;
pub mod measure;
pub mod models;
pub mod moderation;
pub mod plan;
pub mod progress;
pub mod promote;
pub mod publish;
pub mod quantize;
pub mod replay;
pub mod run;
pub mod schema_registry;
pub mod search;
pub mod topics;
pub mod trace;
pub mod train;
pub mod training_bar;
pub mod watch;

/// Refuses a command that talks to the bus when no brokers are configured: the embedded one
/// runs inside `quark up` only.
pub fn require_brokers(settings: &quark_runtime::Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        !settings.uses_embedded_broker(),
        "bus.brokers is empty: set QUARK__BUS__BROKERS (quark up listens on {})",
        settings.broker.listen
    );
    Ok(())
}
