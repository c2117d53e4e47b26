//! Bad input gets its problem+json with the field named, and changes nothing.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{BOOTSTRAP, TestServer};

/// Counts rows a bad request must not have changed.
async fn state(server: &TestServer) -> Value {
    let (_, instances) = server
        .admin(Method::GET, "/v1/instances?status=active", None)
        .await;
    let (_, keys) = server.admin(Method::GET, "/v1/keys", None).await;
    let (_, roles) = server.admin(Method::GET, "/v1/roles", None).await;
    json!([instances, keys, roles])
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_changes_nothing() {
    let server = TestServer::start_admin().await;
    let instance = server
        .instance("jan-1", &["inference:chat", "models:read"])
        .await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let key_path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
    let keys_path = format!("/v1/instances/{instance}/keys");
    let before = state(&server).await;

    let long = "x".repeat(129);
    let cases: Vec<(Method, String, Value, u16, &str)> = vec![
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": "a", "colour": "red"}),
            422,
            "colour",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": ""}),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": long}),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": "a\u{7}b"}),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"description": "no name"}),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": 42}),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": "a", "allowed_scopes": ["inference:caht"]}),
            422,
            "allowed_scopes[0]",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": "a", "allowed_scopes": ["chat"]}),
            422,
            "allowed_scopes[0]",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": "a", "allowed_cidrs": ["10.0.0.0/8", "10.0.0.0/33"]}),
            422,
            "allowed_cidrs[1]",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": "a", "labels": {"bad key": "v"}}),
            422,
            "labels",
        ),
        (
            Method::POST,
            "/v1/instances".into(),
            json!({"name": "jan-1"}),
            409,
            "",
        ),
        (
            Method::PATCH,
            format!("/v1/instances/{instance}"),
            json!({"status": "decommissioned"}),
            422,
            "status",
        ),
        (
            Method::PATCH,
            format!("/v1/instances/{instance}"),
            json!({"status": "paused"}),
            422,
            "status",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k"}),
            422,
            "scopes",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "scopes": ["models:write"]}),
            422,
            "scopes",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "roles": ["no-such-role"]}),
            422,
            "roles[0]",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "roles": ["Bad Role"]}),
            422,
            "roles[0]",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": -5}),
            422,
            "expires_in",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 0}),
            422,
            "expires_in",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 1e30}),
            422,
            "expires_in",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "scopes": ["inference:chat"], "expires_at": "2001-01-01T00:00:00Z"}),
            422,
            "expires_at",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 60, "expires_at": "2099-01-01T00:00:00Z"}),
            422,
            "expires_at",
        ),
        (
            Method::POST,
            keys_path.clone(),
            json!({"name": "k", "scopes": ["inference:chat"], "expires_at": "tomorrow"}),
            422,
            "expires_at",
        ),
        (
            Method::POST,
            "/v1/instances/not-a-uuid/keys".into(),
            json!({"name": "k", "scopes": ["inference:chat"]}),
            400,
            "path",
        ),
        (
            Method::POST,
            format!("/v1/instances/{}/keys", uuid::Uuid::new_v4()),
            json!({"name": "k", "scopes": ["inference:chat"]}),
            404,
            "",
        ),
        (
            Method::PATCH,
            key_path.clone(),
            json!({"enabled": "no"}),
            422,
            "enabled",
        ),
        (
            Method::POST,
            format!("{key_path}/rotate"),
            json!({"grace_seconds": -1}),
            422,
            "grace_seconds",
        ),
        (
            Method::POST,
            format!("{key_path}/rotate"),
            json!({"grace": 10}),
            422,
            "grace",
        ),
        (
            Method::POST,
            format!("{key_path}/revoke"),
            json!({"reason": "r".repeat(513)}),
            422,
            "reason",
        ),
        (
            Method::PUT,
            "/v1/roles/Not_A_Slug".into(),
            json!({"scopes": ["models:read"]}),
            422,
            "name",
        ),
        (
            Method::PUT,
            "/v1/roles/reader".into(),
            json!({"scopes": ["models:reed"]}),
            422,
            "scopes[0]",
        ),
        (
            Method::PUT,
            "/v1/roles/reader".into(),
            json!({"description": "no scopes"}),
            422,
            "scopes",
        ),
        (
            Method::POST,
            "/v1/admin-keys".into(),
            json!({"name": "a", "role": "root"}),
            422,
            "role",
        ),
        (
            Method::POST,
            "/v1/nodes".into(),
            json!({"name": " padded "}),
            422,
            "name",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (got, answer) = server
            .admin(method.clone(), &path, Some(body.clone()))
            .await;
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        assert!(
            answer["code"].is_string() && answer["request_id"].is_string(),
            "{answer}"
        );
        if !field.is_empty() {
            assert_eq!(answer["field"], field, "{method} {path} {body}: {answer}");
        }
    }
    for query in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "status=gone",
        "instance_id=nope",
    ] {
        let (got, answer) = server
            .admin(Method::GET, &format!("/v1/keys?{query}"), None)
            .await;
        assert_eq!(got, 400, "{query}: {answer}");
    }
    assert_eq!(
        state(&server).await,
        before,
        "a refused request changed something"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_json_and_wrong_content_types_are_problems() {
    let server = TestServer::start_admin().await;
    let send = |body: &'static str, content_type: &'static str| {
        server
            .client
            .post(server.url("/v1/instances"))
            .bearer_auth(BOOTSTRAP)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let malformed = send("{\"name\": ", "application/json").await.unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["code"], "malformed_json");

    let wrong_type = send("name=x", "application/x-www-form-urlencoded")
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);

    let too_big = server
        .client
        .post(server.url("/v1/instances"))
        .bearer_auth(BOOTSTRAP)
        .json(&json!({"name": "x", "description": "d".repeat(70_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let (_, page) = server.admin(Method::GET, "/v1/instances", None).await;
    assert!(page["items"].as_array().unwrap().is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_sent_in_the_wrong_field_is_not_echoed_back() {
    let server = TestServer::start_admin().await;
    let key = keyplane_domain::KeySecret::generate(keyplane_domain::KeyKind::Admin).unwrap();
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({"name": "x", "labels": key.expose()})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["field"], "labels");
    let text = body.to_string();
    assert!(!text.contains(key.expose()), "{text}");
    assert!(text.contains(&key.masked()), "{text}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_json_body_must_be_an_object() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let before = state(&server).await;
    // serde reads a struct from an array by field order; keyplane must not.
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/instances".to_owned(),
            json!(["from-array", null, null, null, null]),
        ),
        (
            Method::PATCH,
            format!("/v1/instances/{instance}"),
            json!([null, null, null, null, null, "suspended"]),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{}", key["id"].as_str().unwrap()),
            json!([null, false]),
        ),
        (
            Method::POST,
            "/v1/nodes".to_owned(),
            json!(["array-node", null]),
        ),
        (
            Method::PUT,
            "/v1/roles/array-role".to_owned(),
            json!([null, ["models:read"]]),
        ),
        (Method::POST, "/v1/instances".to_owned(), json!("a string")),
        (Method::POST, "/v1/instances".to_owned(), json!(42)),
    ] {
        let (status, problem) = server
            .admin(method.clone(), &path, Some(body.clone()))
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("body")),
            "{method} {path} {body}: {problem}"
        );
        assert!(
            !problem.to_string().contains("struct"),
            "Rust type names leaked: {problem}"
        );
    }
    assert_eq!(state(&server).await, before, "an array changed something");
}
