//! HTTP to one Confluent-compatible registry: its base URL, the credentials that URL carried
//! (sent as HTTP Basic, as Confluent's clients send them, and never shown), each path segment
//! escaped on its own. The codec's client and the dashboard's schemas panel both read through it.

use crate::RegistryError;
use serde_json::Value;
use std::time::Duration;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub struct RegistryHttp {
    /// The URL without its credentials.
    base: reqwest::Url,
    /// User and password from the URL (`http://user:key@host`).
    credentials: Option<(String, String)>,
    http: reqwest::Client,
}

impl RegistryHttp {
    pub fn new(url: &str) -> Result<RegistryHttp, RegistryError> {
        let (base, credentials) = split_credentials(url)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| remote(base.as_str(), e))?;
        Ok(RegistryHttp {
            base,
            credentials,
            http,
        })
    }

    /// The registry's URL as it may be shown: without credentials or a trailing slash.
    pub fn url(&self) -> &str {
        shown(&self.base)
    }

    /// GET the path `segments`, with `query`.
    pub async fn get(
        &self,
        segments: &[&str],
        query: Option<&str>,
    ) -> Result<Value, RegistryError> {
        self.call(reqwest::Method::GET, segments, query, None).await
    }

    /// POST `body` to the path `segments`.
    pub async fn post(&self, segments: &[&str], body: Value) -> Result<Value, RegistryError> {
        self.call(reqwest::Method::POST, segments, None, Some(body))
            .await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, RegistryError> {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.set_query(query);
        let mut request = self
            .http
            .request(method, url.clone())
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| remote(url.as_str(), e))?;
        let status = response.status();
        let reply: Value = response.json().await.map_err(|e| remote(url.as_str(), e))?;
        if status.is_success() {
            return Ok(reply);
        }
        Err(remote(url.as_str(), format!("{status}: {reply}")))
    }
}

/// `url` as it may be shown: without its credentials.
pub fn shown_url(url: &str) -> String {
    if url.is_empty() {
        return String::new();
    }
    split_credentials(url).map_or_else(
        |_| "(an unreadable URL)".into(),
        |(base, _)| shown(&base).to_string(),
    )
}

fn shown(base: &reqwest::Url) -> &str {
    base.as_str().trim_end_matches('/')
}

/// `url` without its user and password, and them percent-decoded.
fn split_credentials(url: &str) -> Result<(reqwest::Url, Option<(String, String)>), RegistryError> {
    let mut base = reqwest::Url::parse(url).map_err(|e| RegistryError::Remote {
        url: "(the schema registry's URL)".into(),
        reason: e.to_string(),
    })?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = match (base.username(), base.password()) {
        ("", None) => None,
        (user, password) => Some((decode(user), decode(password.unwrap_or_default()))),
    };
    // Neither can fail on an http(s) URL, which has a host.
    let _ = base.set_username("");
    let _ = base.set_password(None);
    Ok((base, credentials))
}

pub(crate) fn remote(url: &str, error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Remote {
        url: url.to_string(),
        reason: error.to_string(),
    }
}
