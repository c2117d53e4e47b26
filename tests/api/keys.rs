use std::sync::Arc;

use chrono::Utc;
use keyplane_domain::Mode;
use keyplane_server::App;
use keyplane_server::clock::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, admin_settings_for, fresh_database};

fn id(body: &Value) -> &str {
    body["id"].as_str().unwrap()
}

#[tokio::test]
async fn an_issued_key_is_shown_once_and_masked_everywhere_after() {
    let server = TestServer::start_admin().await;
    let instance = server
        .instance("jan-1", &["inference:chat", "models:read"])
        .await;
    let response = server
        .as_(
            crate::support::BOOTSTRAP,
            Method::POST,
            &format!("/v1/instances/{instance}/keys"),
        )
        .json(&json!({"name": "laptop", "scopes": ["inference:chat"], "expires_in": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created: Value = response.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("kpi_") && secret.len() == 42);
    assert_eq!(created["masked_key"], format!("kpi_…{}", &secret[38..]));
    assert_eq!(created["status"], "active");
    assert_eq!(created["effective_scopes"], json!(["inference:chat"]));

    let (_, read) = server
        .admin(Method::GET, &format!("/v1/keys/{}", id(&created)), None)
        .await;
    let (_, listed) = server
        .admin(
            Method::GET,
            &format!("/v1/keys?instance_id={instance}"),
            None,
        )
        .await;
    for shown in [read.to_string(), listed.to_string()] {
        assert!(!shown.contains(secret), "the key was shown again: {shown}");
        assert!(shown.contains(created["masked_key"].as_str().unwrap()));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rotation_links_the_keys_and_keeps_the_old_one_for_its_grace_only() {
    let url = fresh_database().await;
    let clock = ManualClock::at(Utc::now());
    let app = App::build_with_clock(admin_settings_for(&url), Arc::new(clock.clone()))
        .await
        .unwrap();
    let server = TestServer::from_app(app);
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let old = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 86400}),
        )
        .await;

    let (status, new) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", id(&old)),
            Some(json!({"grace_seconds": 600})),
        )
        .await;
    assert_eq!(status, 201, "{new}");
    assert_ne!(new["secret"], old["secret"]);
    assert_eq!(new["rotated_from"], old["id"]);
    assert_eq!(new["name"], "k");
    assert_eq!(new["scopes"], json!(["inference:chat"]));
    let (_, old_now) = server
        .admin(Method::GET, &format!("/v1/keys/{}", id(&old)), None)
        .await;
    assert_eq!(old_now["status"], "rotating");
    assert_eq!(old_now["rotated_to"], new["id"]);

    clock.advance(chrono::Duration::seconds(601));
    let (_, old_later) = server
        .admin(Method::GET, &format!("/v1/keys/{}", id(&old)), None)
        .await;
    assert_eq!(old_later["status"], "expired");
    let (_, new_later) = server
        .admin(Method::GET, &format!("/v1/keys/{}", id(&new)), None)
        .await;
    assert_eq!(new_later["status"], "active");

    // A rotated key cannot be rotated again.
    let (status, _) = server
        .admin(Method::POST, &format!("/v1/keys/{}/rotate", id(&old)), None)
        .await;
    assert_eq!(status, 409);

    // The successor lives as long as the original did, and expires by the clock.
    clock.advance(chrono::Duration::seconds(86_400));
    let (_, expired) = server
        .admin(Method::GET, &format!("/v1/keys/{}", id(&new)), None)
        .await;
    assert_eq!(expired["status"], "expired");
    let (_, listed) = server
        .admin(Method::GET, "/v1/keys?status=expired", None)
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_grace_window_never_outlives_the_old_key() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let old = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 60}),
        )
        .await;
    let (_, _) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", id(&old)),
            Some(json!({"grace_seconds": 3600})),
        )
        .await;
    let (_, old_now) = server
        .admin(Method::GET, &format!("/v1/keys/{}", id(&old)), None)
        .await;
    assert_eq!(old_now["grace_until"], old_now["expires_at"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn two_rotations_racing_yield_one_successor_and_one_409() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    for round in 0..5 {
        let key = server
            .key(
                &instance,
                json!({"name": format!("k{round}"), "scopes": ["inference:chat"]}),
            )
            .await;
        let path = format!("/v1/keys/{}/rotate", id(&key));
        let (a, b) = tokio::join!(
            server.admin(Method::POST, &path, None),
            server.admin(Method::POST, &path, None)
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "round {round}: {a:?} {b:?}");
        let loser = if a.0 == 409 { &a.1 } else { &b.1 };
        assert_eq!(loser["code"], "conflict");
        let (_, listed) = server
            .admin(
                Method::GET,
                &format!("/v1/keys?instance_id={instance}&status=active"),
                None,
            )
            .await;
        let successors = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["rotated_from"] == key["id"])
            .count();
        assert_eq!(successors, 1, "round {round}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn disable_enable_and_revoke_change_the_status_users_see() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let path = format!("/v1/keys/{}", id(&key));

    let (_, disabled) = server
        .admin(Method::PATCH, &path, Some(json!({"enabled": false})))
        .await;
    assert_eq!(disabled["status"], "disabled");
    let (_, renamed) = server
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"enabled": true, "name": "renamed"})),
        )
        .await;
    assert_eq!(
        (renamed["status"].as_str(), renamed["name"].as_str()),
        (Some("active"), Some("renamed"))
    );

    let (status, revoked) = server
        .admin(
            Method::POST,
            &format!("{path}/revoke"),
            Some(json!({"reason": "laptop stolen"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_reason"], "laptop stolen");
    // Revoking again changes nothing; a revoked key cannot be enabled or rotated.
    let (status, again) = server
        .admin(Method::POST, &format!("{path}/revoke"), None)
        .await;
    assert_eq!(
        (status, &again["revoked_at"]),
        (200, &revoked["revoked_at"])
    );
    let (status, _) = server
        .admin(Method::PATCH, &path, Some(json!({"enabled": true})))
        .await;
    assert_eq!(status, 409);
    let (status, _) = server
        .admin(Method::POST, &format!("{path}/rotate"), None)
        .await;
    assert_eq!(status, 409);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn effective_scopes_follow_roles_and_the_ceiling_as_they_change() {
    let server = TestServer::start_admin().await;
    let instance = server
        .instance(
            "jan-1",
            &[
                "inference:chat",
                "inference:embeddings",
                "models:read",
                "models:write",
            ],
        )
        .await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["models:read"], "roles": ["inference-client"]}),
        )
        .await;
    assert_eq!(
        key["effective_scopes"],
        json!(["inference:chat", "inference:embeddings", "models:read"])
    );
    let path = format!("/v1/keys/{}", id(&key));

    // Narrowing the role narrows the key at once.
    let (status, _) = server
        .admin(
            Method::PUT,
            "/v1/roles/inference-client",
            Some(json!({"scopes": ["inference:chat"]})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, now) = server.admin(Method::GET, &path, None).await;
    assert_eq!(
        now["effective_scopes"],
        json!(["inference:chat", "models:read"])
    );

    // So does narrowing the instance's ceiling.
    server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{instance}"),
            Some(json!({"allowed_scopes": ["models:read"]})),
        )
        .await;
    let (_, now) = server.admin(Method::GET, &path, None).await;
    assert_eq!(now["effective_scopes"], json!(["models:read"]));

    // A role that live keys carry cannot be deleted; an unused one can.
    let (status, _) = server
        .admin(Method::DELETE, "/v1/roles/inference-client", None)
        .await;
    assert_eq!(status, 409);
    let (status, _) = server
        .admin(
            Method::PUT,
            "/v1/roles/reader",
            Some(json!({"description": "reads", "scopes": ["models:read"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = server.admin(Method::DELETE, "/v1/roles/reader", None).await;
    assert_eq!(status, 204);
    let (_, roles) = server.admin(Method::GET, "/v1/roles", None).await;
    let names: Vec<_> = roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(
        names,
        [
            json!("inference-client"),
            json!("model-manager"),
            json!("node-admin")
        ]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_scope_outside_the_ceiling_is_a_422_naming_it() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let (status, body) = server
        .admin(
            Method::POST,
            &format!("/v1/instances/{instance}/keys"),
            Some(json!({"name": "k", "scopes": ["inference:chat", "models:write"]})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["field"], "scopes");
    assert!(body["detail"].as_str().unwrap().contains("models:write"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn audience_names_resolve_to_registered_nodes() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-1"})))
        .await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "audience": ["cortex-1"]}),
        )
        .await;
    assert_eq!(key["audience"], json!([node["id"]]));
    let (status, body) = server
        .admin(
            Method::POST,
            &format!("/v1/instances/{instance}/keys"),
            Some(json!({"name": "k", "scopes": ["inference:chat"], "audience": ["cortex-1", "nope"]})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("audience[1]")));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_lifetime_over_the_policy_is_capped_in_dev_and_refused_in_mixed() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let capped = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 400 * 86400}),
        )
        .await;
    assert!(
        capped["warnings"][0]
            .as_str()
            .unwrap()
            .contains("capped to 90d")
    );
    let lifetime = chrono::DateTime::parse_from_rfc3339(capped["expires_at"].as_str().unwrap())
        .unwrap()
        - chrono::DateTime::parse_from_rfc3339(capped["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(lifetime.num_days(), 90);
    // Every key expires, even when no lifetime is asked for.
    let default = server
        .key(
            &instance,
            json!({"name": "k2", "scopes": ["inference:chat"]}),
        )
        .await;
    assert!(default["expires_at"].is_string());
    server.stop().await.unwrap();

    let url = fresh_database().await;
    let mut settings = admin_settings_for(&url);
    settings.mode = Mode::Mixed;
    let server = TestServer::start_with(settings).await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let (status, body) = server
        .admin(
            Method::POST,
            &format!("/v1/instances/{instance}/keys"),
            Some(json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 400 * 86400})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("expires_in")));
    let (_, listed) = server.admin(Method::GET, "/v1/keys", None).await;
    assert!(
        listed["items"].as_array().unwrap().is_empty(),
        "nothing was stored"
    );
    server.stop().await.unwrap();
}
