//! The REST API of Confluent's Schema Registry, as its clients use it. Requests may be sent as
//! `application/vnd.schemaregistry.v1+json`, `application/vnd.schemaregistry+json` or
//! `application/json`; responses are `application/vnd.schemaregistry.v1+json`, errors
//! `{"error_code": …, "message": …}` with Confluent's codes.

use crate::store::{Store, SubjectVersion, VersionSpec};
use crate::{CompatibilityLevel, RegistryError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quark_api_keys::ApiKeys;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::warn;

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Reply = Result<Response, RegistryError>;
type Params = Query<HashMap<String, String>>;

/// The registry's routes over `store`; writes (registering, deleting, setting compatibility)
/// need one of `keys`, reads are open.
pub fn router(store: Store, keys: ApiKeys) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_one),
        )
        .route("/config", get(global_config).put(set_global_config))
        .route(
            "/config/{subject}",
            get(subject_config).put(set_subject_config),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::new(keys),
            writes_need_a_key,
        ))
        .with_state(store)
}

async fn writes_need_a_key(
    State(keys): State<Arc<ApiKeys>>,
    path: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let writes = match *request.method() {
        Method::PUT | Method::DELETE => true,
        // Other POSTs (lookups, compatibility checks) only read.
        Method::POST => path.as_str() == "/subjects/{subject}/versions",
        _ => false,
    };
    if let (true, Err(refusal)) = (writes, keys.check(request.headers())) {
        return RegistryError::Unauthorized(refusal.message()).into_response();
    }
    next.run(request).await
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            warn!(label = self.label(), error = %self, "registry request failed");
        }
        let body = json!({"error_code": self.error_code(), "message": self.to_string()});
        (
            self.status(),
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// A request body: JSON whatever the declared content type.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::BadRequest(e.to_string()))
}

/// `{"schema": "...", "schemaType": "AVRO", "references": []}`; other fields are ignored.
#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaBody {
    fn avro(bytes: &Bytes) -> Result<String, RegistryError> {
        let request: SchemaBody = body(bytes)?;
        match request.schema_type.as_deref() {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(RegistryError::InvalidSchema(format!(
                    "schema type {other} is not supported; only AVRO is"
                )));
            }
        }
        if !request.references.is_empty() {
            return Err(RegistryError::Unsupported("schema references"));
        }
        Ok(request.schema)
    }
}

fn described(found: SubjectVersion) -> Value {
    json!({
        "subject": found.subject,
        "version": found.version,
        "id": found.id,
        "schema": found.schema,
    })
}

fn schema_id(id: &str) -> Result<i32, RegistryError> {
    id.parse()
        .map_err(|_| RegistryError::SchemaNotFound(id.to_string()))
}

async fn subjects(State(store): State<Store>) -> Reply {
    Ok(ok(json!(store.subjects().await?)))
}

async fn versions(State(store): State<Store>, Path(subject): Path<String>) -> Reply {
    Ok(ok(json!(store.versions(&subject).await?)))
}

async fn register(State(store): State<Store>, Path(subject): Path<String>, bytes: Bytes) -> Reply {
    let schema = SchemaBody::avro(&bytes)?;
    Ok(ok(json!({"id": store.register(&subject, &schema).await?})))
}

async fn lookup(State(store): State<Store>, Path(subject): Path<String>, bytes: Bytes) -> Reply {
    let schema = SchemaBody::avro(&bytes)?;
    Ok(ok(described(store.lookup(&subject, &schema).await?)))
}

async fn delete_subject(
    State(store): State<Store>,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Reply {
    if params.get("permanent").is_some_and(|p| p == "true") {
        return Err(RegistryError::Unsupported("permanent deletion"));
    }
    Ok(ok(json!(store.delete_subject(&subject).await?)))
}

async fn version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
) -> Reply {
    let spec: VersionSpec = version.parse()?;
    Ok(ok(described(store.version(&subject, spec).await?)))
}

async fn version_schema(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
) -> Reply {
    let found = store.version(&subject, version.parse()?).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.schema,
    )
        .into_response())
}

async fn schema_by_id(State(store): State<Store>, Path(id): Path<String>) -> Reply {
    Ok(ok(json!({"schema": store.schema(schema_id(&id)?).await?})))
}

async fn raw_schema_by_id(State(store): State<Store>, Path(id): Path<String>) -> Reply {
    let schema = store.schema(schema_id(&id)?).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema,
    )
        .into_response())
}

async fn id_versions(State(store): State<Store>, Path(id): Path<String>) -> Reply {
    let pairs = store.id_versions(schema_id(&id)?).await?;
    let listed: Vec<Value> = pairs
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(json!(listed)))
}

fn compatibility(messages: Vec<String>, params: &HashMap<String, String>) -> Response {
    let mut reply = json!({"is_compatible": messages.is_empty()});
    if params.get("verbose").is_some_and(|v| v == "true") {
        reply["messages"] = json!(messages);
    }
    ok(reply)
}

async fn check_all(
    State(store): State<Store>,
    Path(subject): Path<String>,
    Query(params): Params,
    bytes: Bytes,
) -> Reply {
    let schema = SchemaBody::avro(&bytes)?;
    let messages = store.check(&subject, None, &schema).await?;
    Ok(compatibility(messages, &params))
}

async fn check_one(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    bytes: Bytes,
) -> Reply {
    let spec: VersionSpec = version.parse()?;
    let schema = SchemaBody::avro(&bytes)?;
    let messages = store.check(&subject, Some(spec), &schema).await?;
    Ok(compatibility(messages, &params))
}

/// `{"compatibility": "FULL"}` (Confluent's PUT body; `compatibilityLevel` also accepted).
fn level_in(bytes: &Bytes) -> Result<CompatibilityLevel, RegistryError> {
    let request: Value = body(bytes)?;
    let level = request
        .get("compatibility")
        .or_else(|| request.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .ok_or_else(|| RegistryError::BadRequest("no compatibility given".into()))?;
    level.parse()
}

async fn global_config(State(store): State<Store>) -> Reply {
    Ok(ok(
        json!({"compatibilityLevel": store.level(None).await?.as_str()}),
    ))
}

async fn set_global_config(State(store): State<Store>, bytes: Bytes) -> Reply {
    let level = level_in(&bytes)?;
    store.set_level(None, level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

/// A subject without a level of its own reports the global one.
async fn subject_config(State(store): State<Store>, Path(subject): Path<String>) -> Reply {
    let level = store.level(Some(&subject)).await?;
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

async fn set_subject_config(
    State(store): State<Store>,
    Path(subject): Path<String>,
    bytes: Bytes,
) -> Reply {
    let level = level_in(&bytes)?;
    store.set_level(Some(&subject), level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}
