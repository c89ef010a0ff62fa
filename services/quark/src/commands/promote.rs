//! `quark promote MODEL --alias NAME`: points a named alias (a domain model, a distilled or
//! quantized variant) at a model the registry knows. The gateway serves every alias; the
//! router can send an intent to it.

use crate::Migrator;
use anyhow::{bail, ensure};
use quark_events::{Alias, Event, EventHeader, Id, ModelPromoted, PromotionReason};
use quark_runtime::{Settings, db};

/// The model.promoted that moves alias `name` to `model_id`, carrying the model.
pub async fn named(settings: &Settings, model_id: Id, name: &str) -> anyhow::Result<Event> {
    // `quark` names the champion at the gateway.
    let taken = ["champion", "challenger", "previous", "named", "quark"];
    ensure!(
        !taken.contains(&name) && valid_name(name),
        "an alias name is 1-64 letters, digits, '-', '_' or '.', and not {}",
        taken.join(", ")
    );
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    let Some(model) = quark_registry::model(&database, model_id).await? else {
        bail!("the registry knows no model {model_id} (`quark models` lists them)");
    };
    ensure!(
        model.run_kind.is_generative(),
        "model {model_id} is a reward model: it scores answers and cannot serve them"
    );
    let previous = quark_registry::aliases(&database)
        .await?
        .into_iter()
        .find_map(|(alias, id)| (alias == name).then_some(id));
    let header = EventHeader::root("quark-promote");
    let mut promotion =
        ModelPromoted::moving(header, Alias::Named, model_id, PromotionReason::Manual);
    (promotion.previous_model_id, promotion.alias_name) = (previous, Some(name.to_string()));
    let promotion = quark_registry::carry_model(&database, promotion).await?;
    database.close().await.ok();
    Ok(Event::ModelPromoted(promotion))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
