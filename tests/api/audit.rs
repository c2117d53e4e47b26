//! Every change writes an audit entry in the same transaction, with the
//! actor, request id and address, and never a key.

use reqwest::Method;
use serde_json::json;
use sqlx::Connection;

use crate::support::{TestServer, admin_settings_for, fresh_database};

#[derive(Debug, sqlx::FromRow)]
#[allow(dead_code)] // read through Debug in the leak check
struct Row {
    actor: String,
    action: String,
    target_type: String,
    target_id: Option<String>,
    request_id: Option<String>,
    client_ip: Option<String>,
    details: serde_json::Value,
}

#[tokio::test]
async fn every_change_is_audited_with_who_what_and_no_secret() {
    let url = fresh_database().await;
    let server = TestServer::start_with(admin_settings_for(&url)).await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let key_path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
    server
        .admin(Method::PATCH, &key_path, Some(json!({"enabled": false})))
        .await;
    server
        .admin(Method::PATCH, &key_path, Some(json!({"enabled": true})))
        .await;
    let (_, rotated) = server
        .admin(Method::POST, &format!("{key_path}/rotate"), None)
        .await;
    server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", rotated["id"].as_str().unwrap()),
            None,
        )
        .await;
    server
        .admin(
            Method::PUT,
            "/v1/roles/reader",
            Some(json!({"scopes": ["models:read"]})),
        )
        .await;
    let (_, admin_key) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "ops", "role": "operator"})),
        )
        .await;
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-1"})))
        .await;
    let response = server
        .as_(
            admin_key["secret"].as_str().unwrap(),
            Method::DELETE,
            &format!("/v1/instances/{instance}"),
        )
        .header("x-request-id", "decommission-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // A refused request writes nothing.
    server
        .admin(Method::POST, "/v1/instances", Some(json!({"name": ""})))
        .await;

    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let rows: Vec<Row> = sqlx::query_as(
        "select actor, action, target_type, target_id, request_id, client_ip, details from audit_log order by id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "instance.create",
            "key.create",
            "key.disable",
            "key.enable",
            "key.rotate",
            "key.revoke",
            "role.create",
            "admin_key.create",
            "node.create",
            "instance.decommission",
        ]
    );
    let last = rows.last().unwrap();
    assert_eq!(
        last.actor,
        format!("admin_key:{}", admin_key["id"].as_str().unwrap())
    );
    assert_eq!(last.target_type, "instance");
    assert_eq!(last.target_id.as_deref(), Some(instance.as_str()));
    assert_eq!(last.request_id.as_deref(), Some("decommission-42"));
    assert_eq!(last.client_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        rows[..9]
            .iter()
            .all(|r| r.actor == "bootstrap" && r.request_id.is_some())
    );

    let everything = format!("{rows:?}");
    for secret in [
        &key["secret"],
        &rotated["secret"],
        &admin_key["secret"],
        &node["secret"],
    ] {
        let secret = secret.as_str().unwrap();
        assert!(!everything.contains(secret), "a key is in the audit log");
        assert!(
            everything.contains(&secret[secret.len() - 4..]),
            "masked forms are kept"
        );
    }
    server.stop().await.unwrap();
}
