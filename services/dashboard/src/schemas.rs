//! The schemas panel: each subject in the schema registry (Quark's embedded one, or Confluent's
//! or Karapace's — the same REST API), its versions and compatibility level, beside the event
//! type it carries and whether this build writes its latest version.

use quark_events::EventKind;
use quark_schema_registry::RegistryError;
use quark_schema_registry::http::RegistryHttp;
use quark_schema_registry::subject_of;
use serde::Serialize;

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

/// Every subject of the registry at `registry`.
pub async fn subjects(registry: &str) -> Result<Vec<Subject>, RegistryError> {
    let reader = RegistryHttp::new(registry)?;
    let listed = reader.get(&["subjects"], None).await?;
    let names: Vec<String> = serde_json::from_value(listed).map_err(|e| RegistryError::Remote {
        url: format!("{}/subjects", reader.url()),
        reason: e.to_string(),
    })?;
    let mut subjects = Vec::new();
    for name in names {
        let versions: Vec<i64> =
            serde_json::from_value(reader.get(&["subjects", &name, "versions"], None).await?)
                .unwrap_or_default();
        let latest = reader
            .get(&["subjects", &name, "versions", "latest"], None)
            .await
            .ok();
        let compatibility = reader
            .get(&["config", &name], Some("defaultToGlobal=true"))
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
