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

/// Makes a few changes, so the log has entries to tamper with.
async fn some_history(server: &TestServer) {
    for i in 0..4 {
        server
            .instance(&format!("jan-{i}"), &["inference:chat"])
            .await;
    }
}

/// The verdict of `/v1/audit/verify`, without how many checkpoints it
/// matched (a background task signs them when it likes).
async fn verify(server: &TestServer) -> serde_json::Value {
    let (status, mut body) = server.admin(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["checkpoints"].is_u64(), "{body}");
    body.as_object_mut().map(|b| b.remove("checkpoints"));
    body
}

async fn ids(db: &sqlx::PgPool) -> Vec<i64> {
    sqlx::query_scalar("select id from audit_log order by seq")
        .fetch_all(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_chain_catches_an_edited_a_deleted_and_a_reordered_entry() {
    for tamper in ["edit", "delete", "reorder"] {
        let url = fresh_database().await;
        let server = TestServer::start_with(admin_settings_for(&url)).await;
        some_history(&server).await;
        assert_eq!(
            verify(&server).await,
            json!({"valid": true, "entries": 4, "first_bad": null, "problem": null})
        );

        let db = sqlx::PgPool::connect(&url).await.unwrap();
        let ids = ids(&db).await;
        let expected_bad = match tamper {
            "edit" => {
                sqlx::query(
                    "update audit_log set details = '{\"name\": \"someone-else\"}' where id = $1",
                )
                .bind(ids[1])
                .execute(&db)
                .await
                .unwrap();
                ids[1]
            }
            "delete" => {
                sqlx::query("delete from audit_log where id = $1")
                    .bind(ids[1])
                    .execute(&db)
                    .await
                    .unwrap();
                ids[2]
            }
            _ => {
                // Swap the places of the second and third entries (via a free seq,
                // as the unique constraint is checked row by row).
                for (id, seq) in [(ids[1], 1000), (ids[2], 2), (ids[1], 3)] {
                    sqlx::query("update audit_log set seq = $2 where id = $1")
                        .bind(id)
                        .bind(seq)
                        .execute(&db)
                        .await
                        .unwrap();
                }
                ids[2]
            }
        };
        let verdict = verify(&server).await;
        assert_eq!(verdict["valid"], false, "{tamper}: {verdict}");
        assert_eq!(verdict["first_bad"], expected_bad, "{tamper}: {verdict}");
        server.stop().await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_writers_in_two_processes_keep_one_chain() {
    let url = fresh_database().await;
    let first = TestServer::start_with(admin_settings_for(&url)).await;
    let second = TestServer::start_with(admin_settings_for(&url)).await;
    let mut writes = Vec::new();
    for i in 0..15 {
        for (server, side) in [(&first, "a"), (&second, "b")] {
            writes.push(server.admin(
                Method::POST,
                "/v1/instances",
                Some(json!({"name": format!("{side}-{i}")})),
            ));
        }
    }
    for (status, body) in futures_util::future::join_all(writes).await {
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(
        verify(&first).await,
        json!({"valid": true, "entries": 30, "first_bad": null, "problem": null})
    );
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test]
async fn the_log_is_searchable_exportable_and_verifiable_offline() {
    let server = TestServer::start_admin().await;
    some_history(&server).await;
    let (_, key) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "audit", "role": "auditor"})),
        )
        .await;
    let auditor = key["secret"].as_str().unwrap();

    let (status, page) = crate::support::call(
        server.as_(
            auditor,
            Method::GET,
            "/v1/audit?action=instance.create&limit=3",
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] == "instance.create")
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = crate::support::call(
        server.as_(
            auditor,
            Method::GET,
            &format!("/v1/audit?action=instance.create&limit=3&cursor={cursor}"),
        ),
        None,
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let (_, by_actor) = server
        .admin(Method::GET, "/v1/audit?actor=nobody", None)
        .await;
    assert!(by_actor["items"].as_array().unwrap().is_empty());

    let export = server
        .as_(auditor, Method::GET, "/v1/audit/export")
        .send()
        .await
        .unwrap();
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.unwrap();
    let entry_lines = || {
        text.lines().filter(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            ["export", "checkpoint", "signing_key"]
                .iter()
                .all(|kind| line.get(kind).is_none())
        })
    };
    assert_eq!(entry_lines().count(), 5);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.ndjson");
    std::fs::write(&file, &text).unwrap();
    let run = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyplane"))
            .args(["audit", "verify"])
            .arg(path)
            .output()
            .unwrap()
    };
    let good = run(&file);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("\"valid\":true"));

    let tampered = text.replacen("jan-2", "jan-X", 1);
    let bad_file = dir.path().join("tampered.ndjson");
    std::fs::write(&bad_file, tampered).unwrap();
    let bad = run(&bad_file);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );

    // A signed checkpoint of the head verifies against the JWKS.
    let (status, checkpoint) = server
        .admin(Method::POST, "/v1/audit/checkpoints", None)
        .await;
    assert_eq!(status, 200, "{checkpoint}");
    let last: serde_json::Value = serde_json::from_str(entry_lines().next_back().unwrap()).unwrap();
    assert_eq!(checkpoint["head_hash"], last["hash"]);
    let jwks: serde_json::Value = server
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let jwt = checkpoint["signature"].as_str().unwrap();
    let kid = jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["head_hash"], last["hash"]);
    assert_eq!(claims["seq"], last["seq"]);
    let (_, listed) = crate::support::call(
        server.as_(auditor, Method::GET, "/v1/audit/checkpoints"),
        None,
    )
    .await;
    assert_eq!(listed["items"][0]["seq"], last["seq"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn repeated_failed_authentication_is_audited_once_per_address() {
    let url = fresh_database().await;
    let server = TestServer::start_with(admin_settings_for(&url)).await;
    for attempt in 0..12 {
        let guess = format!("kpa_guess{attempt:033}");
        let (status, _) =
            crate::support::call(server.as_(&guess, Method::GET, "/v1/instances"), None).await;
        assert_eq!(status, 401);
    }
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let rows: Vec<(String, Option<String>, serde_json::Value)> =
        crate::support::eventually(std::time::Duration::from_secs(10), "the auth.failed entry", || {
            let db = db.clone();
            async move {
                let rows: Vec<(String, Option<String>, serde_json::Value)> = sqlx::query_as(
                    "select outcome, client_ip, details from audit_log where action = 'auth.failed'",
                )
                .fetch_all(&db)
                .await
                .unwrap();
                (!rows.is_empty()).then_some(rows)
            }
        })
        .await;
    assert_eq!(
        rows.len(),
        1,
        "one entry per address per minute, not one per failure"
    );
    assert_eq!(rows[0].0, "denied");
    assert_eq!(rows[0].1.as_deref(), Some("127.0.0.1"));
    assert!(
        !rows[0].2.to_string().contains("kpa_guess"),
        "the tried credential is not kept"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn refusals_of_authenticated_operators_are_audited_once_per_minute() {
    let url = fresh_database().await;
    let server = TestServer::start_with(admin_settings_for(&url)).await;
    let (_, viewer) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "looker", "role": "viewer"})),
        )
        .await;
    let viewer_key = viewer["secret"].as_str().unwrap();
    // A viewer may not register instances: refused by its role, three times.
    for _ in 0..3 {
        let (status, _) = crate::support::call(
            server.as_(viewer_key, Method::POST, "/v1/instances"),
            Some(json!({"name": "nope"})),
        )
        .await;
        assert_eq!(status, 403);
    }
    // The bootstrap admin asks for a scope outside the instance's ceiling: refused by policy.
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let (status, problem) = server
        .admin(
            Method::POST,
            &format!("/v1/instances/{instance}/keys"),
            Some(json!({"name": "k", "scopes": ["models:write"]})),
        )
        .await;
    assert_eq!((status, &problem["code"]), (422, &json!("policy_refused")));
    assert_eq!(problem["field"], "scopes");
    // Malformed input is not a policy refusal, and is not audited.
    let (status, _) = server
        .admin(Method::POST, "/v1/instances", Some(json!({"name": ""})))
        .await;
    assert_eq!(status, 422);

    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let rows: Vec<(String, String, Option<String>, serde_json::Value)> =
        crate::support::eventually(std::time::Duration::from_secs(10), "both refusals", || {
            let db = db.clone();
            async move {
                let rows: Vec<(String, String, Option<String>, serde_json::Value)> =
                    sqlx::query_as(
                        "select actor, outcome, target_id, details from audit_log
                      where action = 'policy.refused' order by seq",
                    )
                    .fetch_all(&db)
                    .await
                    .unwrap();
                (rows.len() >= 2).then_some(rows)
            }
        })
        .await;
    let viewer_actor = format!("admin_key:{}", viewer["id"].as_str().unwrap());
    assert_eq!(rows.len(), 2, "one entry per operator per minute: {rows:?}");
    // Entries are written off the request path, so their order is not the requests'.
    let by = |actor: &str| rows.iter().find(|r| r.0 == actor).unwrap();
    let viewer_row = by(&viewer_actor);
    assert_eq!(viewer_row.1, "denied");
    assert_eq!(viewer_row.2.as_deref(), Some("POST /v1/instances"));
    assert_eq!(viewer_row.3["status"], 403);
    let bootstrap_row = by("bootstrap");
    assert_eq!(
        bootstrap_row.2.as_deref(),
        Some("POST /v1/instances/{id}/keys")
    );
    assert_eq!(bootstrap_row.3["status"], 422);
    server.stop().await.unwrap();
}
