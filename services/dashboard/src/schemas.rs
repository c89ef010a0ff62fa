//! The schemas panel: each subject in the schema registry (Quark's embedded one, or Confluent's
//! or Karapace's — the same REST API), its versions and compatibility level, beside the event
//! type it carries and whether this build writes its latest version.

use quark_events::EventKind;
use quark_schema_registry::client::split_credentials;
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

/// Reads the registry at one URL, sending the credentials the URL carries as HTTP Basic.
struct Reader {
    client: reqwest::Client,
    base: reqwest::Url,
    credentials: Option<(String, String)>,
}

impl Reader {
    fn new(registry: &str) -> Result<Reader, String> {
        let (base, credentials) = split_credentials(registry).map_err(|e| e.to_string())?;
        let base = reqwest::Url::parse(&base).map_err(|e| format!("{base}: {e}"))?;
        let client = reqwest::Client::new();
        Ok(Reader {
            client,
            base,
            credentials,
        })
    }

    /// GET the path `segments` (each escaped as one segment), with `query`.
    async fn get(&self, segments: &[&str], query: Option<&str>) -> Result<Value, String> {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.set_query(query);
        let mut request = self.client.get(url.clone());
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: {status} {body}"));
        }
        Ok(body)
    }
}

/// Every subject of the registry at `registry`.
pub async fn subjects(registry: &str) -> Result<Vec<Subject>, String> {
    let reader = Reader::new(registry)?;
    let names: Vec<String> = serde_json::from_value(reader.get(&["subjects"], None).await?)
        .map_err(|e| format!("{}/subjects: {e}", reader.base))?;
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
