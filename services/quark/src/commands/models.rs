//! `quark models`: the registry with lineage; `--at TIME`: which model was champion then, and
//! by which decision.

use crate::Migrator;
use anyhow::Context;
use quark_events::{Alias, Id};
use quark_runtime::{Settings, db};
use serde_json::{Value, json};

/// Milliseconds since the epoch from RFC 3339 (`2026-11-25T20:00:00Z`) or a number of ms.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("{text:?} is neither RFC 3339 (2026-11-25T20:00:00Z) nor milliseconds since the epoch"))
}

/// Every model with its lineage, aliases and evaluations.
pub async fn list(settings: &Settings) -> anyhow::Result<Value> {
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    let mut aliases = serde_json::Map::new();
    for alias in [Alias::Champion, Alias::Challenger, Alias::Previous] {
        if let Some(id) = quark_registry::alias_of(&database, alias).await? {
            aliases.insert(
                serde_json::to_value(alias)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                json!(id.to_string()),
            );
        }
    }
    let evaluations = quark_registry::evaluations(&database).await?;
    let models: Vec<Value> = quark_registry::models(&database)
        .await?
        .into_iter()
        .map(|m| {
            let evals: Vec<Value> = evaluations
                .iter()
                .filter(|e| e.model_id == m.model_id.to_string())
                .map(|e| json!({"evaluation_id": e.evaluation_id, "passed": e.passed, "source": e.source, "at": e.evaluated_at, "failed": failed_checks(&e.event)}))
                .collect();
            json!({
                "model_id": m.model_id.to_string(),
                "run_kind": m.run_kind,
                "parent_model_id": m.parent_model_id.map(|p| p.to_string()),
                "dataset_ids": m.dataset_ids.iter().map(Id::to_string).collect::<Vec<_>>(),
                "tokenizer_id": m.tokenizer_id.to_string(),
                "parameters": m.shape.parameters,
                "metrics": m.metrics,
                "device": m.device,
                "duration_ms": m.duration_ms,
                "trained_at": m.header.occurred_at.0,
                "correlation_id": m.header.correlation_id.to_string(),
                "causation_id": m.header.causation_id.map(|c| c.to_string()),
                "checkpoint": m.checkpoint.uri,
                "evaluations": evals,
            })
        })
        .collect();
    let promotions: Vec<Value> = quark_registry::promotions(&database)
        .await?
        .into_iter()
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .collect();
    database.close().await.ok();
    Ok(json!({"aliases": aliases, "models": models, "promotions": promotions}))
}

/// The gate checks an evaluation failed (eval.regressed names them; eval.completed has none).
fn failed_checks(event: &str) -> Vec<Value> {
    let event: Value = serde_json::from_str(event).unwrap_or_default();
    let checks = event["regressions"]
        .as_array()
        .or(event["checks"].as_array());
    checks
        .into_iter()
        .flatten()
        .filter(|c| c["passed"] == false)
        .cloned()
        .collect()
}

/// The champion at `at_ms`: the promotion that made it, or null.
pub async fn champion_at(settings: &Settings, at_ms: i64) -> anyhow::Result<Value> {
    let database = db::open::<Migrator>(&settings.database_url()).await?;
    let found = quark_registry::champion_at(&database, at_ms).await?;
    database.close().await.ok();
    Ok(json!({"at": at_ms, "champion": found.map(|p| serde_json::to_value(p).unwrap_or_default())}))
}

/// `quark models` as text.
pub fn render(listing: &Value) -> String {
    let mut out = String::new();
    let aliases = listing["aliases"].as_object().cloned().unwrap_or_default();
    for model in listing["models"].as_array().into_iter().flatten() {
        let id = model["model_id"].as_str().unwrap_or_default();
        let tags: Vec<&str> = aliases
            .iter()
            .filter(|(_, v)| v.as_str() == Some(id))
            .map(|(k, _)| k.as_str())
            .collect();
        out.push_str(&format!(
            "{id} {:<9} {:>9} params  val_loss {:<7} parent {}  datasets {}{}\n",
            model["run_kind"].as_str().unwrap_or_default(),
            model["parameters"],
            model["metrics"]["val_loss"]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.4}")),
            model["parent_model_id"].as_str().unwrap_or("-"),
            model["dataset_ids"].as_array().map_or(0, Vec::len),
            if tags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", tags.join(", "))
            },
        ));
    }
    if out.is_empty() {
        out.push_str("no models yet\n");
    }
    out
}
