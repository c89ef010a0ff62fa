//! The schemas panel: each subject in the schema registry (Quark's embedded one, or Confluent's
//! or Karapace's — the same REST API), its versions and compatibility level, beside the event
//! type it carries and whether this build writes its latest version.

use quark_events::EventKind;
use quark_schema_registry::subject_of;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize)]
pub struct Subject {
    pub subject: String,
    /// The topic whose values it describes, for an event type this build knows.
    pub topic: Option<String>,
    pub versions: Vec<i64>,
    pub compatibility: Option<String>,
    /// The registry's id of its latest version.
    pub latest_id: Option<i64>,
    /// The latest version is the schema this build writes.
    pub current: Option<bool>,
}

async fn get(client: &reqwest::Client, url: reqwest::Url) -> Result<Value, String> {
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {body}"));
    }
    Ok(body)
}

/// `registry` with the path `segments` (each escaped as one segment).
fn at(registry: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = registry.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Every subject of the registry at `registry`.
pub async fn subjects(registry: &str) -> Result<Vec<Subject>, String> {
    let client = reqwest::Client::new();
    let base = reqwest::Url::parse(registry).map_err(|e| format!("{registry}: {e}"))?;
    let names: Vec<String> = serde_json::from_value(get(&client, at(&base, &["subjects"])).await?)
        .map_err(|e| format!("{registry}/subjects: {e}"))?;
    let mut subjects = Vec::new();
    for name in names {
        let versions: Vec<i64> = serde_json::from_value(
            get(&client, at(&base, &["subjects", &name, "versions"])).await?,
        )
        .unwrap_or_default();
        let latest = get(
            &client,
            at(&base, &["subjects", &name, "versions", "latest"]),
        )
        .await
        .ok();
        let mut config = at(&base, &["config", &name]);
        config.set_query(Some("defaultToGlobal=true"));
        let compatibility = get(&client, config)
            .await
            .ok()
            .and_then(|c| c["compatibilityLevel"].as_str().map(str::to_string));
        let kind = EventKind::ALL.iter().find(|k| subject_of(**k) == name);
        let current = match (kind, latest.as_ref().and_then(|l| l["schema"].as_str())) {
            (Some(kind), Some(text)) => apache_avro::Schema::parse_str(text)
                .ok()
                .map(|s| s.canonical_form() == kind.schema().canonical_form()),
            _ => None,
        };
        subjects.push(Subject {
            topic: kind.map(|k| k.topic().to_string()),
            subject: name,
            versions,
            compatibility,
            latest_id: latest.as_ref().and_then(|l| l["id"].as_i64()),
            current,
        });
    }
    Ok(subjects)
}
