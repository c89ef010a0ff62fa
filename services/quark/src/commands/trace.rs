//! `quark trace <correlation id>`: one learning cycle, event by event, from the journal.

use crate::Migrator;
use quark_runtime::{Settings, db};

pub async fn trace(
    settings: &Settings,
    correlation_id: &str,
) -> anyhow::Result<Vec<quark_journal::JournalEntry>> {
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    Ok(quark_journal::cycle(&database, correlation_id).await?)
}
