//! The fleet's own credentials: node keys and admin keys rotate with
//! overlap, keep their identity, and tell their holders when to rotate.

use std::time::Duration as StdDuration;

use chrono::Duration;
use keyplane_server::clock::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{BOOTSTRAP, TestServer, admin_settings_for, call, eventually, fresh_database};

/// A server whose clock moves only when the test says so.
async fn server_with_clock() -> (TestServer, ManualClock) {
    TestServer::start_with_clock(admin_settings_for(&fresh_database().await)).await
}

/// Registers a node; answers its body (with `secret`).
async fn node(server: &TestServer, name: &str) -> Value {
    let (status, body) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({ "name": name })))
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Whether `node_key` is accepted and judges `key` active.
async fn introspects(server: &TestServer, node_key: &str, key: &str) -> (u16, bool) {
    let (status, body) = call(
        server.as_(node_key, Method::POST, "/v1/introspect"),
        Some(json!({ "token": key })),
    )
    .await;
    (status, body["active"] == json!(true))
}

fn secret(body: &Value) -> String {
    body["secret"].as_str().expect("a secret").to_owned()
}

#[tokio::test]
async fn a_node_key_rotates_with_overlap_and_the_node_keeps_its_id() {
    let server = TestServer::start_admin().await;
    let node = node(&server, "cortex-1").await;
    let id = node["id"].as_str().unwrap();
    let first = secret(&node);
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "audience": [id]}),
        )
        .await;
    let key = secret(&key);

    let (status, rotated) = server
        .admin(
            Method::POST,
            &format!("/v1/nodes/{id}/rotate"),
            Some(json!({"grace_seconds": 3600})),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["id"], json!(id), "the node keeps its id");
    let second = secret(&rotated);
    assert_ne!(first, second);
    assert!(second.starts_with("kpn_"));
    assert_eq!(rotated["previous_key"]["masked_key"], node["masked_key"]);
    // Both keys work through the grace window, and the key whose audience
    // names the node is still meant for it.
    assert_eq!(introspects(&server, &first, &key).await, (200, true));
    assert_eq!(introspects(&server, &second, &key).await, (200, true));
    let (_, seen) = call(server.as_(&first, Method::GET, "/v1/nodes/self"), None).await;
    assert_eq!(seen["presented_key"], "previous", "{seen}");
    let (_, seen) = call(server.as_(&second, Method::GET, "/v1/nodes/self"), None).await;
    assert_eq!(seen["presented_key"], "current", "{seen}");
    assert_eq!(seen["rotation_due"], false);

    // Rotating again at once, with no grace: the two older keys stop.
    let (status, again) = server
        .admin(
            Method::POST,
            &format!("/v1/nodes/{id}/rotate"),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["previous_key"], Value::Null);
    let third = secret(&again);
    assert_eq!(introspects(&server, &first, &key).await.0, 401);
    assert_eq!(introspects(&server, &second, &key).await.0, 401);
    assert_eq!(introspects(&server, &third, &key).await, (200, true));

    // Bad input, and a retired node, are refused.
    let path = format!("/v1/nodes/{id}/rotate");
    for bad in [json!({"grace_seconds": -1}), json!({"grace": 1})] {
        let (status, body) = server.admin(Method::POST, &path, Some(bad)).await;
        assert_eq!(status, 422, "{body}");
    }
    let (status, _) = server
        .admin(Method::DELETE, &format!("/v1/nodes/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server.admin(Method::POST, &path, None).await;
    assert_eq!(status, 404);

    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=node.rotate", None)
        .await;
    let entries = audit["items"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{audit}");
    let text = audit.to_string();
    for whole in [&first, &second, &third] {
        assert!(
            !text.contains(whole.as_str()),
            "a whole node key in the audit log"
        );
    }
}

#[tokio::test]
async fn a_node_rotates_itself_and_may_retry_only_briefly() {
    let (server, clock) = server_with_clock().await;
    let node = node(&server, "gate-1").await;
    let id = node["id"].as_str().unwrap().to_owned();
    let first = secret(&node);

    let (status, rotated) = call(
        server.as_(&first, Method::POST, "/v1/nodes/self/rotate"),
        Some(json!({"grace_seconds": 3600})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["id"], json!(id));
    let lost = secret(&rotated);

    // The answer was lost: within minutes, the node asks again with the key
    // it still has, and gets another; the lost one never works.
    clock.advance(Duration::minutes(5));
    let (status, again) = call(
        server.as_(&first, Method::POST, "/v1/nodes/self/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{again}");
    let second = secret(&again);
    let (status, _) = call(server.as_(&lost, Method::GET, "/v1/nodes/self"), None).await;
    assert_eq!(status, 401);
    let (status, seen) = call(server.as_(&second, Method::GET, "/v1/nodes/self"), None).await;
    assert_eq!(status, 200);
    assert_eq!(seen["presented_key"], "current");

    // Once the node has used its new key, a retry cannot take it away.
    let path = format!("/v1/nodes/{id}");
    eventually(
        StdDuration::from_secs(30),
        "the new key's use recorded",
        || async {
            let (_, node) = server.admin(Method::GET, &path, None).await;
            node["key_used_at"].is_string().then_some(())
        },
    )
    .await;
    let (status, _) = call(
        server.as_(&first, Method::POST, "/v1/nodes/self/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 409);

    // Long after, the old key is spent for rotation (though it still works
    // until its grace window ends), and the refusal is audited.
    clock.advance(Duration::minutes(11));
    let (status, refused) = call(
        server.as_(&first, Method::POST, "/v1/nodes/self/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=node.rotate", None)
        .await;
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "denied").count(),
        2,
        "{audit}"
    );

    // The heartbeat and the node's own record say when to rotate.
    let heartbeat = json!({"mode": "dev", "version": "test"});
    let (status, beat) = call(
        server.as_(&second, Method::POST, "/v1/heartbeat"),
        Some(heartbeat.clone()),
    )
    .await;
    assert_eq!(status, 200, "{beat}");
    assert_eq!(beat["rotation_due"], false);
    assert_eq!(beat["presented_key"], "current");
    clock.advance(Duration::days(73));
    let (_, beat) = call(
        server.as_(&second, Method::POST, "/v1/heartbeat"),
        Some(heartbeat),
    )
    .await;
    assert_eq!(beat["rotation_due"], true, "{beat}");
    let (status, third) = call(
        server.as_(&second, Method::POST, "/v1/nodes/self/rotate"),
        Some(json!({"grace_seconds": 90_000})),
    )
    .await;
    assert_eq!(
        status, 422,
        "a holder gives its old key at most a day: {third}"
    );
}

#[tokio::test]
async fn admin_keys_rotate_with_overlap_and_holders_rotate_their_own() {
    let server = TestServer::start_admin().await;
    let (status, created) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "ops-viewer", "role": "viewer", "expires_in": 86_400 * 30})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let first = secret(&created);
    let first_id = created["id"].as_str().unwrap().to_owned();

    // A holder rotates its own key, whatever its role.
    let (status, rotated) = call(
        server.as_(&first, Method::POST, "/v1/admin-keys/self/rotate"),
        Some(json!({"grace_seconds": 600})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["role"], "viewer");
    assert_eq!(rotated["name"], "ops-viewer");
    assert_eq!(rotated["rotated_from"], json!(first_id));
    let second = secret(&rotated);
    let second_id = rotated["id"].as_str().unwrap().to_owned();
    // The successor lives as long as the key did.
    let life = |body: &Value| {
        let at = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(body[field].as_str().unwrap()).unwrap()
        };
        at("expires_at") - at("created_at")
    };
    assert_eq!(life(&rotated), life(&created));

    // Both work through the grace window; the old one says what replaced it.
    let (status, own) = call(server.as_(&first, Method::GET, "/v1/admin-keys/self"), None).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["rotated_to"], json!(second_id));
    let (status, _) = call(server.as_(&second, Method::GET, "/v1/nodes"), None).await;
    assert_eq!(status, 200);

    // A viewer may not rotate anyone else's key; an admin may, with no grace.
    let path = format!("/v1/admin-keys/{second_id}/rotate");
    let (status, _) = call(server.as_(&second, Method::POST, &path), None).await;
    assert_eq!(status, 403);
    let (status, third) = server
        .admin(Method::POST, &path, Some(json!({"grace_seconds": 0})))
        .await;
    assert_eq!(status, 201, "{third}");
    let (status, _) = call(server.as_(&second, Method::GET, "/v1/nodes"), None).await;
    assert_eq!(status, 401, "no grace: the rotated key stops at once");
    // An operator's rotation is final.
    let (status, _) = server.admin(Method::POST, &path, None).await;
    assert_eq!(status, 409);

    // The bootstrap token has no key of its own.
    let (status, body) = call(
        server.as_(BOOTSTRAP, Method::POST, "/v1/admin-keys/self/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(!body.to_string().contains(BOOTSTRAP));
}

/// Settings for a server whose scheduler and background reads run often.
fn brisk(url: &str) -> keyplane_server::Settings {
    keyplane_server::Settings {
        scheduler_interval: StdDuration::from_millis(100),
        metrics_refresh: StdDuration::from_millis(100),
        ..admin_settings_for(url)
    }
}

#[tokio::test]
async fn every_fleet_credential_is_warned_of_once_before_it_expires() {
    let (server, clock) = TestServer::start_with_clock(brisk(&fresh_database().await)).await;
    let (receiver, _receiving, _) = server.subscribe(&["credential.expiring"]).await;

    let node = node(&server, "gate-1").await; // 90 days
    let node_key = secret(&node);
    let (_, admin) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "ops", "role": "operator", "expires_in": 20 * 86_400})),
        )
        .await;
    let token = |seconds: i64| {
        let server = &server;
        async move {
            let (status, body) = server
                .admin(
                    Method::POST,
                    "/v1/enrollment-tokens",
                    Some(json!({"name": "fleet", "expires_in": seconds, "scopes": ["inference:chat"]})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body
        }
    };
    let week_token = token(5 * 86_400).await;
    let _hour_token = token(3600).await; // made to live an hour: never warned of

    let warned = |kind: &'static str| {
        let receiver = receiver.clone();
        move || {
            let receiver = receiver.clone();
            async move {
                let found: Vec<Value> = receiver
                    .of("credential.expiring")
                    .into_iter()
                    .filter(|w| w["data"]["kind"] == kind)
                    .collect();
                (!found.is_empty()).then_some(found)
            }
        }
    };
    // Half a day before the week's token ends: warned at 1 day.
    clock.advance(Duration::hours(108));
    let got = eventually(
        StdDuration::from_secs(30),
        "the token's warning",
        warned("enrollment_token"),
    )
    .await;
    assert_eq!(got[0]["data"]["id"], week_token["id"]);
    assert_eq!(got[0]["data"]["days_left"], 1);
    // 13 days before the admin key ends: warned at 14.
    clock.advance(Duration::hours(60));
    let got = eventually(
        StdDuration::from_secs(30),
        "the admin key's warning",
        warned("admin_key"),
    )
    .await;
    assert_eq!(got[0]["data"]["id"], admin["id"]);
    assert_eq!(got[0]["data"]["days_left"], 14);
    assert!(
        !got[0]
            .to_string()
            .contains(admin["secret"].as_str().unwrap())
    );
    // Its holder rotates it: the successor is not due for a warning.
    let (status, _) = call(
        server.as_(
            admin["secret"].as_str().unwrap(),
            Method::POST,
            "/v1/admin-keys/self/rotate",
        ),
        None,
    )
    .await;
    assert_eq!(status, 201);

    // Six days before the node key ends: one warning (the nearest, at 7),
    // in /healthz and /metrics too, until the node rotates its key.
    clock.advance(Duration::days(84) - Duration::hours(168));
    let got = eventually(
        StdDuration::from_secs(30),
        "the node key's warning",
        warned("node_key"),
    )
    .await;
    assert_eq!(got[0]["data"]["id"], node["id"]);
    assert_eq!(got[0]["data"]["days_left"], 7);
    let health = eventually(StdDuration::from_secs(30), "/healthz to warn", || async {
        let health: Value = server.get("/healthz").await.json().await.unwrap();
        let warns = health["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "node_key");
        warns.then_some(health)
    })
    .await;
    assert_eq!(health["status"], "ok", "{health}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("keyplane_credential_expiry_seconds{kind=\"node_key\"}"),
        "{metrics}"
    );
    let (status, _) = call(
        server.as_(&node_key, Method::POST, "/v1/nodes/self/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 201);
    eventually(
        StdDuration::from_secs(30),
        "/healthz to calm down",
        || async {
            let health: Value = server.get("/healthz").await.json().await.unwrap();
            let kinds: Vec<&str> = health["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|w| w["kind"].as_str())
                .collect();
            // The webhook's own secret, never rotated here, is due too.
            (kinds == ["webhook_secret"]).then_some(())
        },
    )
    .await;

    // Each credential was warned of once (the webhook's own secret, 90 days
    // old by now, too), and all is in the audit log.
    let warnings = receiver.of("credential.expiring");
    let mut kinds: Vec<&str> = warnings
        .iter()
        .map(|w| w["data"]["kind"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "admin_key",
            "enrollment_token",
            "node_key",
            "webhook_secret"
        ],
        "{warnings:?}"
    );
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=credential.expiring", None)
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 4, "{audit}");
}

#[tokio::test]
async fn a_bootstrap_token_left_set_in_prod_is_warned_of() {
    let url = fresh_database().await;
    let settings = keyplane_server::Settings {
        mode: keyplane_domain::Mode::Prod,
        ..brisk(&url)
    };
    let server = TestServer::start_with(settings).await;
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert!(
        health["warnings"].as_array().unwrap().is_empty(),
        "{health}"
    );
    let (status, _) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "first", "role": "admin", "expires_in": 86_400})),
        )
        .await;
    assert_eq!(status, 201);
    let health = eventually(StdDuration::from_secs(30), "the warning", || async {
        let health: Value = server.get("/healthz").await.json().await.unwrap();
        let warned = health["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "bootstrap_token");
        warned.then_some(health)
    })
    .await;
    assert!(!health.to_string().contains(BOOTSTRAP));
}

#[tokio::test]
async fn signing_keys_renew_on_schedule_published_before_they_sign() {
    let (server, clock) = TestServer::start_with_clock(brisk(&fresh_database().await)).await;
    let node = node(&server, "cortex-1").await;
    let node_key = secret(&node);
    let kids = || async {
        let jwks: Value = server
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<Vec<String>>()
    };
    let signed_by = || async {
        let jwt = server
            .as_(&node_key, Method::POST, "/v1/introspect")
            .header("accept", "application/token-introspection+jwt")
            .form(&[("token", "kpi_x")])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let header = jwt.split('.').next().unwrap();
        let header: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    let first = kids().await;
    assert_eq!(first.len(), 1);
    assert_eq!(signed_by().await, first[0]);

    // A day before the key has signed for 30 days, the next one is
    // published; the current one still signs.
    clock.advance(Duration::days(29) + Duration::minutes(1));
    let both = eventually(
        StdDuration::from_secs(30),
        "the next key published",
        || async {
            let kids = kids().await;
            (kids.len() == 2).then_some(kids)
        },
    )
    .await;
    assert_eq!(
        both[1], first[0],
        "the next key comes first, the signing one after"
    );
    assert_eq!(signed_by().await, first[0]);

    // Once its time comes, the next key signs; the old one stays published
    // while answers it signed may be held, then leaves the JWKS.
    clock.advance(Duration::days(1));
    eventually(
        StdDuration::from_secs(30),
        "the next key to sign",
        || async { (signed_by().await == both[0]).then_some(()) },
    )
    .await;
    assert_eq!(kids().await, both);
    clock.advance(Duration::days(2));
    eventually(
        StdDuration::from_secs(30),
        "the old key to leave the JWKS",
        || async { (kids().await == [both[0].clone()]).then_some(()) },
    )
    .await;
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=signing_key.renew", None)
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
}

/// Renewal decides from the stored keys: a run that comes before this
/// process's view has caught up with the last one makes no second key.
#[tokio::test]
async fn a_renewal_run_before_the_view_catches_up_makes_no_second_key() {
    use keyplane_server::clock::Clock;
    use keyplane_server::signing::{MasterKey, Schedule, Signer};

    let url = fresh_database().await;
    let (_server, clock) = TestServer::start_with_clock(admin_settings_for(&url)).await;
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let master = MasterKey::parse(crate::support::MASTER_KEY).unwrap();
    let signer = Signer::load(&db, master, Schedule::default(), clock.now())
        .await
        .unwrap();
    let due = clock.now() + Duration::days(29) + Duration::minutes(1);

    let mut tx = db.begin().await.unwrap();
    let made = signer.renew(&mut tx, due).await.unwrap();
    tx.commit().await.unwrap();
    assert!(made.is_some(), "the next key is due");
    // No reload in between: the view still has one key.
    let mut tx = db.begin().await.unwrap();
    let again = signer.renew(&mut tx, due).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(again, None, "the next key is made already");
}

#[tokio::test]
async fn the_master_key_rotates_and_every_sealed_secret_follows() {
    let url = fresh_database().await;
    let old = crate::support::MASTER_KEY;
    let new = keyplane_server::signing::MasterKey::generate().unwrap();
    let under = |key: &str| keyplane_server::Settings {
        master_key: Some(secrecy::SecretString::from(key.to_owned())),
        ..brisk(&url)
    };
    // Under the old key: a signing key and a webhook's secret.
    let server = TestServer::start_with(under(old)).await;
    let kid = || async {
        let jwks: Value = server
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .unwrap();
        jwks["keys"][0]["kid"].clone()
    };
    let signing_kid = kid().await;
    let (receiver, _receiving, _) = server.subscribe(&["key.revoked"]).await;
    server.stop().await.unwrap();

    let rotate = |master: &str, previous: Option<&str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyplane"));
        command
            .args(["master-key", "rotate"])
            .env("DATABASE_URL", &url)
            .env("KEYPLANE_MASTER_KEY", master)
            .env_remove("KEYPLANE_MASTER_KEY_PREVIOUS")
            .env_remove("KEYPLANE_MODE");
        if let Some(previous) = previous {
            command.env("KEYPLANE_MASTER_KEY_PREVIOUS", previous);
        }
        async move {
            let output = command.output().await.unwrap();
            let err = String::from_utf8_lossy(&output.stderr).into_owned();
            (output.status.code(), err)
        }
    };
    // With a previous key that sealed nothing here: refused, nothing changed.
    let stranger = keyplane_server::signing::MasterKey::generate().unwrap();
    let (code, err) = rotate(&new, Some(&stranger)).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // The rotation, then again (nothing left to do).
    let (code, err) = rotate(&new, Some(old)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("1 signing keys, 1 webhook secrets (0 already"),
        "{err}"
    );
    let (code, err) = rotate(&new, Some(old)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("0 signing keys, 0 webhook secrets (2 already"),
        "{err}"
    );
    for secret in [&new, &stranger, &old.to_owned()] {
        assert!(!err.contains(secret.as_str()));
    }

    // Under the new key alone: the same signing key signs, and the webhook's
    // secret opens (its deliveries go out).
    let server = TestServer::start_with(under(&new)).await;
    let jwks: Value = server
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], signing_kid);
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    eventually(StdDuration::from_secs(30), "the delivery", || async {
        (!receiver.of("key.revoked").is_empty()).then_some(())
    })
    .await;
    // And a keyplane still on the old key alone is told, not fooled.
    server.stop().await.unwrap();
    let refused = keyplane_server::App::build(under(old)).await;
    assert!(
        refused.is_err(),
        "the old key no longer opens the signing key"
    );
}

#[tokio::test]
async fn a_webhook_secret_rotates_with_both_signatures_through_the_overlap() {
    let (server, clock) = TestServer::start_with_clock(brisk(&fresh_database().await)).await;
    let (receiver, _receiving, hook) = server
        .subscribe(&["key.revoked", "credential.expiring"])
        .await;
    let id = hook["id"].as_str().unwrap();
    let (status, rotated) = server
        .admin(
            Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            Some(json!({"grace_seconds": 3600})),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    assert_ne!(rotated["secret"], hook["secret"]);
    assert!(rotated["previous_secret_until"].is_string());

    let instance = server.instance("jan", &["inference:chat"]).await;
    // Revokes a fresh key and answers the signatures its delivery carried,
    // each checked against the secrets.
    let delivered_signatures = || async {
        let key = server
            .key(
                &instance,
                json!({"name": "k", "scopes": ["inference:chat"]}),
            )
            .await;
        let path = format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap());
        assert_eq!(server.admin(Method::POST, &path, None).await.0, 200);
        let (headers, body) = eventually(StdDuration::from_secs(30), "the delivery", || async {
            let got = receiver.got.lock().unwrap().clone();
            got.into_iter()
                .find(|(_, body)| body["data"]["key_id"] == key["id"])
        })
        .await;
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
        let bytes = serde_json::to_vec(&body).unwrap();
        let verifies = |secret: &Value| {
            let raw = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                secret.as_str().unwrap().trim_start_matches("whsec_"),
            )
            .unwrap();
            let expected =
                keyplane_server::webhooks::signature(&raw, &id, timestamp.parse().unwrap(), &bytes);
            header("webhook-signature")
                .split(' ')
                .any(|s| s == expected)
        };
        let count = header("webhook-signature").split(' ').count();
        (
            count,
            verifies(&hook["secret"]),
            verifies(&rotated["secret"]),
        )
    };
    // Through the overlap, a receiver holding either secret verifies...
    assert_eq!(delivered_signatures().await, (2, true, true));
    // ...and after it, only the new one signs.
    clock.advance(Duration::hours(2));
    assert_eq!(delivered_signatures().await, (1, false, true));

    // A secret lives no longer than a key, and its end is warned of.
    clock.advance(Duration::days(77));
    let warned = eventually(
        StdDuration::from_secs(30),
        "the secret's warning",
        || async {
            receiver
                .of("credential.expiring")
                .into_iter()
                .find(|w| w["data"]["kind"] == "webhook_secret")
        },
    )
    .await;
    assert_eq!(warned["data"]["id"], json!(id));
    assert_eq!(warned["data"]["days_left"], 14);
    assert!(
        !warned
            .to_string()
            .contains(rotated["secret"].as_str().unwrap())
    );
}
