//! `quark models`: the registry with lineage; `--at TIME`: which model was champion then, and
//! by which decision.

use crate::Migrator;
use anyhow::Context;
use quark_events::Id;
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
    let aliases: serde_json::Map<String, Value> = quark_registry::aliases(&database)
        .await?
        .into_iter()
        .map(|(name, id)| (name, json!(id.to_string())))
        .collect();
    let evaluations = quark_registry::evaluations(&database).await?;
    let flags = quark_registry::forgotten(&database).await?;
    let models: Vec<Value> = quark_registry::models(&database)
        .await?
        .into_iter()
        .map(|m| {
            let evals: Vec<Value> = evaluations
                .iter()
                .filter(|e| e.model_id == m.model_id.to_string())
                .map(|e| json!({"evaluation_id": e.evaluation_id, "passed": e.passed, "source": e.source, "at": e.evaluated_at, "failed": failed_checks(&e.event), "learnt": learnt(&e.event), "report": report_uri(&e.event)}))
                .collect();
            // Documents it learnt from that were forgotten since (`quark forget`).
            let forgotten: Vec<&str> = flags
                .iter()
                .filter(|f| f.model_id == m.model_id.to_string())
                .map(|f| f.document_id.as_str())
                .collect();
            json!({
                "model_id": m.model_id.to_string(),
                "flagged": !forgotten.is_empty(),
                "forgotten_documents": forgotten,
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

/// A failed gate check as a reader wants it: what moved, from where to where, and the limit.
fn describe_check(check: &Value) -> String {
    let metric = check["metric"].as_str().unwrap_or("?");
    let candidate = check["candidate"].as_f64().unwrap_or(f64::NAN);
    let threshold = check["threshold"].as_f64().unwrap_or(f64::NAN);
    let from = match check["baseline"].as_f64() {
        Some(baseline) => format!("{baseline:.4} → "),
        None => String::new(),
    };
    let percent = (threshold * 1e4).round() / 1e2;
    let limit = match check["rule"].as_str() {
        Some("max_relative_increase") => format!("at most +{percent}%"),
        Some("max_relative_decrease") => format!("at most -{percent}%"),
        Some("min_value") => format!("at least {threshold}"),
        _ => format!("at most {threshold}"),
    };
    format!("{metric} {from}{candidate:.4} ({limit})")
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

/// What the candidate learnt and what it cost, from the gate's checks: each metric the
/// champion was measured on too, before (champion) and after (candidate).
fn learnt(event: &str) -> Value {
    let event: Value = serde_json::from_str(event).unwrap_or_default();
    let checks = event["checks"]
        .as_array()
        .or(event["regressions"].as_array());
    let mut out = serde_json::Map::new();
    for check in checks.into_iter().flatten() {
        if let (Some(metric), false) = (check["metric"].as_str(), check["baseline"].is_null()) {
            out.insert(
                metric.to_string(),
                json!({"before": check["baseline"], "after": check["candidate"]}),
            );
        }
    }
    Value::Object(out)
}

/// Where the evaluation's full report (every metric of both models, every sample) is.
fn report_uri(event: &str) -> Value {
    let event: Value = serde_json::from_str(event).unwrap_or_default();
    event["report"]["uri"].clone()
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
        if let Some(line) = learning_line(model) {
            out.push_str(&line);
        }
        let forgotten: Vec<&str> = model["forgotten_documents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !forgotten.is_empty() {
            out.push_str(&format!(
                "    flagged: learnt from forgotten {}\n",
                forgotten.join(", ")
            ));
        }
        for evaluation in model["evaluations"].as_array().into_iter().flatten() {
            let failed: Vec<String> = evaluation["failed"]
                .as_array()
                .into_iter()
                .flatten()
                .map(describe_check)
                .collect();
            if !failed.is_empty() {
                out.push_str(&format!("    rejected: {}\n", failed.join("; ")));
            }
        }
    }
    if out.is_empty() {
        out.push_str("no models yet\n");
    }
    out
}

/// `learnt: …` for a model trained on corrections: how many it answers at greedy decoding
/// before and after, their loss before and after, and the perplexity it cost.
fn learning_line(model: &Value) -> Option<String> {
    let m = &model["metrics"];
    let (before, after) = (
        m["taught_loss_before"].as_f64()?,
        m["taught_loss"].as_f64()?,
    );
    let mut parts = vec![format!("loss on the corrections {before:.3} -> {after:.3}")];
    let evaluation = model["evaluations"].as_array()?.last().cloned();
    let learnt = evaluation.as_ref().map(|e| &e["learnt"]);
    let share = |v: &Value| v.as_f64().map(|x| format!("{:.0} %", 100.0 * x));
    if let Some(em) = learnt
        .map(|l| &l["taught_exact_match"])
        .filter(|v| !v.is_null())
    {
        parts.push(format!(
            "answered with the correction {} -> {}",
            share(&em["before"]).unwrap_or("-".into()),
            share(&em["after"]).unwrap_or("-".into())
        ));
    }
    if let Some(ppl) = learnt.map(|l| &l["perplexity"]).filter(|v| !v.is_null())
        && let (Some(b), Some(a)) = (ppl["before"].as_f64(), ppl["after"].as_f64())
    {
        parts.push(format!(
            "perplexity {b:.2} -> {a:.2} ({:+.2} %)",
            100.0 * (a / b - 1.0)
        ));
    }
    Some(format!("    learnt: {}\n", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_names_each_model_and_why_a_rejected_one_was_rejected() {
        let listing = json!({
            "aliases": {"champion": "m1"},
            "models": [
                {"model_id": "m1", "run_kind": "pretrain", "parameters": 1000, "metrics": {"val_loss": 5.2151},
                 "parent_model_id": null, "dataset_ids": ["d1"], "evaluations": [{"passed": true, "failed": []}]},
                {"model_id": "m2", "run_kind": "sft", "parameters": 1000, "metrics": {},
                 "parent_model_id": "m1", "dataset_ids": ["d2"], "evaluations": [{"passed": false, "failed": [
                    {"metric": "learnt_loss", "rule": "max_relative_increase", "baseline": 4.5265, "candidate": 4.8219, "threshold": 0.05, "passed": false},
                    {"metric": "safety_pass_rate", "rule": "min_value", "baseline": 1.0, "candidate": 0.5, "threshold": 1.0, "passed": false}
                 ]}]}
            ]
        });
        let text = render(&listing);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("m1 pretrain") && lines[0].ends_with("[champion]"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("m2 sft") && lines[1].contains("parent m1"),
            "{text}"
        );
        assert_eq!(
            lines[2],
            "    rejected: learnt_loss 4.5265 → 4.8219 (at most +5%); safety_pass_rate 1.0000 → 0.5000 (at least 1)"
        );
    }

    #[test]
    fn failed_checks_come_from_regressions_or_unpassed_checks() {
        let regressed = r#"{"regressions": [{"metric": "perplexity", "passed": false}]}"#;
        assert_eq!(failed_checks(regressed)[0]["metric"], "perplexity");
        let completed = r#"{"checks": [{"metric": "perplexity", "passed": true, "baseline": 10.0, "candidate": 10.1}, {"metric": "safety_pass_rate", "passed": true, "baseline": null, "candidate": 1.0}], "report": {"uri": "file:///r"}}"#;
        assert!(failed_checks(completed).is_empty());
        assert_eq!(
            learnt(completed),
            json!({"perplexity": {"before": 10.0, "after": 10.1}})
        );
        assert_eq!(report_uri(completed), "file:///r");
    }
}
