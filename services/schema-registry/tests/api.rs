//! The REST API over real HTTP, on a real SQLite file: what Confluent's clients rely on.

mod common;

use common::{Server, record};
use serde_json::{Value, json};

fn v1() -> Value {
    record("Thing", json!([{"name": "a", "type": "string"}]))
}

/// v1 plus a field with a default: BACKWARD compatible with v1.
fn v2() -> Value {
    record(
        "Thing",
        json!([{"name": "a", "type": "string"}, {"name": "b", "type": "int", "default": 0}]),
    )
}

/// v1 plus a field without a default: the new schema cannot read v1's data.
fn v3_required_field() -> Value {
    record(
        "Thing",
        json!([{"name": "a", "type": "string"}, {"name": "c", "type": "int"}]),
    )
}

fn error_code(reply: &Value) -> u64 {
    reply["error_code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no error_code in {reply}"))
}

#[tokio::test]
async fn register_returns_one_global_id_per_schema_and_lists_versions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (status, first) = server.register("things-value", &v1()).await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_i64().unwrap();
    assert_eq!(
        server.register("things-value", &v1()).await.1,
        json!({"id": id})
    );
    let (_, again) = server.register("others-value", &v1()).await;
    assert_eq!(
        again,
        json!({"id": id}),
        "the same schema under another subject keeps its id"
    );
    let (_, second) = server.register("things-value", &v2()).await;
    let id2 = second["id"].as_i64().unwrap();
    assert_ne!(id2, id);

    assert_eq!(
        server.get("/subjects").await.1,
        json!(["others-value", "things-value"])
    );
    assert_eq!(
        server.get("/subjects/things-value/versions").await.1,
        json!([1, 2])
    );
    let (_, latest) = server.get("/subjects/things-value/versions/latest").await;
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["id"], id2);
    assert_eq!(latest["subject"], "things-value");
    let (_, one) = server.get("/subjects/things-value/versions/1").await;
    assert_eq!(one["id"], id);
    let stored: Value = serde_json::from_str(one["schema"].as_str().unwrap()).unwrap();
    assert_eq!(stored, v1());
    let (status, raw) = server.get("/subjects/things-value/versions/1/schema").await;
    assert_eq!((status, raw), (200, v1()));

    let (_, by_id) = server.get(&format!("/schemas/ids/{id}")).await;
    let schema: Value = serde_json::from_str(by_id["schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema, v1());
    assert_eq!(
        server.get(&format!("/schemas/ids/{id}/versions")).await.1,
        json!([{"subject": "others-value", "version": 1}, {"subject": "things-value", "version": 1}])
    );
    let (status, found) = server
        .post(
            "/subjects/things-value",
            json!({"schema": v1().to_string()}),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        (found["version"].clone(), found["id"].clone()),
        (json!(1), json!(id))
    );
    assert_eq!(server.get("/schemas/types").await.1, json!(["AVRO"]));
    server.stop().await;
}

#[tokio::test]
async fn responses_carry_confluents_content_type_and_plain_json_requests_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    for content_type in ["application/json", "application/vnd.schemaregistry+json"] {
        let response = reqwest::Client::new()
            .post(format!("{}/subjects/plain-value/versions", server.url))
            .bearer_auth(common::KEY)
            .header("content-type", content_type)
            .body(json!({"schema": v1().to_string()}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{content_type}");
        assert_eq!(
            response.headers()["content-type"],
            "application/vnd.schemaregistry.v1+json"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn backward_transitive_refuses_an_incompatible_schema_with_409() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    assert_eq!(
        server.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD_TRANSITIVE"})
    );
    server.register("things-value", &v1()).await;
    let check = |schema: Value| json!({"schema": schema.to_string()});
    let path = "/compatibility/subjects/things-value/versions/latest";
    assert_eq!(
        server.post(path, check(v2())).await.1,
        json!({"is_compatible": true})
    );
    let (_, verbose) = server
        .post(&format!("{path}?verbose=true"), check(v3_required_field()))
        .await;
    assert_eq!(verbose["is_compatible"], false);
    let messages = verbose["messages"].as_array().unwrap();
    assert!(
        messages[0].as_str().unwrap().contains("BACKWARD"),
        "{verbose}"
    );
    let (status, refused) = server.register("things-value", &v3_required_field()).await;
    assert_eq!((status, error_code(&refused)), (409, 409), "{refused}");
    assert_eq!(
        server.get("/subjects/things-value/versions").await.1,
        json!([1])
    );

    // Compatible with the latest version but not with the first: only transitive refuses it.
    let without_a = record("Thing", json!([]));
    let a_as_int = record("Thing", json!([{"name": "a", "type": "int", "default": 0}]));
    server.register("t-value", &v1()).await;
    assert_eq!(server.register("t-value", &without_a).await.0, 200);
    assert_eq!(server.register("t-value", &a_as_int).await.0, 409);
    let (status, set) = server
        .call(
            "PUT",
            "/config/t-value",
            Some(json!({"compatibility": "BACKWARD"})),
        )
        .await;
    assert_eq!((status, set), (200, json!({"compatibility": "BACKWARD"})));
    assert_eq!(server.register("t-value", &a_as_int).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn config_is_global_and_per_subject() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    assert_eq!(
        server.get("/config/things-value").await.1,
        json!({"compatibilityLevel": "BACKWARD_TRANSITIVE"}),
        "a subject without its own level has the global one"
    );
    let put = |level: &str| Some(json!({"compatibility": level}));
    assert_eq!(
        server
            .call("PUT", "/config/things-value", put("NONE"))
            .await
            .0,
        200
    );
    assert_eq!(server.call("PUT", "/config", put("FULL")).await.0, 200);
    assert_eq!(
        server.get("/config/things-value").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        server.get("/config").await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    server.register("things-value", &v1()).await;
    assert_eq!(
        server
            .register("things-value", &v3_required_field())
            .await
            .0,
        200,
        "NONE accepts anything"
    );
    let (status, bad) = server.call("PUT", "/config", put("SIDEWAYS")).await;
    assert_eq!((status, error_code(&bad)), (422, 42203), "{bad}");
    server.register("full-value", &v1()).await;
    let (status, reply) = server.register("full-value", &v2()).await;
    assert_eq!(
        status, 200,
        "a new field with a default is FULL compatible: {reply}"
    );
    let without_a = record("Thing", json!([]));
    let (status, refused) = server.register("full-value", &without_a).await;
    assert_eq!(
        status, 409,
        "FULL refuses to drop a field v2 cannot do without"
    );
    assert!(
        refused["message"].as_str().unwrap().contains("FORWARD"),
        "{refused}"
    );
    server.stop().await;
}

#[tokio::test]
async fn errors_use_confluents_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.register("things-value", &v1()).await;
    let (status, missing) = server.get("/subjects/nothing-value/versions").await;
    assert_eq!((status, error_code(&missing)), (404, 40401));
    assert_eq!(missing["message"], "Subject 'nothing-value' not found.");
    let (status, version) = server.get("/subjects/things-value/versions/7").await;
    assert_eq!((status, error_code(&version)), (404, 40402));
    let (status, invalid) = server.get("/subjects/things-value/versions/first").await;
    assert_eq!((status, error_code(&invalid)), (422, 42202));
    let (status, schema) = server.get("/schemas/ids/999").await;
    assert_eq!((status, error_code(&schema)), (404, 40403));
    let (status, bad) = server
        .post(
            "/subjects/things-value/versions",
            json!({"schema": "{\"type\": \"recrod\"}"}),
        )
        .await;
    assert_eq!((status, error_code(&bad)), (422, 42201), "{bad}");
    let (status, unknown) = server
        .post(
            "/subjects/things-value",
            json!({"schema": v2().to_string()}),
        )
        .await;
    assert_eq!((status, error_code(&unknown)), (404, 40403), "{unknown}");
    server.stop().await;
}

#[tokio::test]
async fn writes_need_the_key_and_reads_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let schema = json!({"schema": v1().to_string()});
    let level = json!({"compatibility": "NONE"});
    let writes = [
        (
            "POST",
            "/subjects/things-value/versions",
            Some(schema.clone()),
        ),
        ("PUT", "/config", Some(level.clone())),
        ("PUT", "/config/things-value", Some(level)),
        ("DELETE", "/subjects/things-value", None),
    ];
    for key in [None, Some("not-the-key")] {
        for (method, path, body) in &writes {
            let (status, reply) = server.call_as(key, method, path, body.clone()).await;
            assert_eq!(
                (status, error_code(&reply)),
                (401, 40101),
                "{method} {path}: {reply}"
            );
        }
    }
    let basic = |key: &str| {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("quark:{key}"));
        format!("Basic {pair}")
    };
    let registered = reqwest::Client::new()
        .post(format!("{}/subjects/things-value/versions", server.url))
        .header("authorization", basic(common::KEY))
        .header("content-type", "application/json")
        .body(schema.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status().as_u16(), 200, "HTTP Basic with the key");
    let (status, _) = server.call_as(None, "GET", "/config", None).await;
    assert_eq!(status, 200);
    for (method, path, body) in [
        ("GET", "/subjects", None),
        ("GET", "/subjects/things-value/versions/1", None),
        ("POST", "/subjects/things-value", Some(schema.clone())),
        (
            "POST",
            "/compatibility/subjects/things-value/versions/latest",
            Some(schema),
        ),
    ] {
        let (status, reply) = server.call_as(None, method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {reply}");
    }
    // Nothing was written without the key.
    assert_eq!(server.store.versions("things-value").await.unwrap(), [1]);
    server.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_ids_versions_config_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let id1 = server.register("things-value", &v1()).await.1["id"].clone();
    let id2 = server.register("things-value", &v2()).await.1["id"].clone();
    server.register("gone-value", &v3_required_field()).await;
    server
        .call(
            "PUT",
            "/config/things-value",
            Some(json!({"compatibility": "FORWARD"})),
        )
        .await;
    let (status, deleted) = server.call("DELETE", "/subjects/gone-value", None).await;
    assert_eq!((status, deleted), (200, json!([1])));
    server.stop().await;

    let server = Server::start(dir.path()).await;
    assert_eq!(server.get("/subjects").await.1, json!(["things-value"]));
    assert_eq!(
        server.get("/subjects/things-value/versions").await.1,
        json!([1, 2])
    );
    assert_eq!(
        server.get("/subjects/things-value/versions/2").await.1["id"],
        id2
    );
    assert_eq!(server.register("things-value", &v1()).await.1["id"], id1);
    assert_eq!(
        server.get("/config/things-value").await.1,
        json!({"compatibilityLevel": "FORWARD"})
    );
    let (status, _) = server.get("/subjects/gone-value/versions").await;
    assert_eq!(status, 404, "a deleted subject stays deleted");
    let (status, _) = server.get("/schemas/ids/3").await;
    assert_eq!(
        status, 200,
        "a soft-deleted subject's schema stays readable by id"
    );
    let fresh = record("Fresh", json!([{"name": "x", "type": "long"}]));
    assert_eq!(
        server.register("fresh-value", &fresh).await.1,
        json!({"id": 4}),
        "ids continue after a restart"
    );
    server.stop().await;
}
