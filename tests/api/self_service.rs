//! Instance self-service: enrollment tokens spent atomically, a key holder's
//! own view and rotation, the scheduler under two processes, and webhook
//! deliveries that survive a restart.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Receiver, TestServer, admin_settings_for, call, eventually, fresh_database};

/// Mints an enrollment token and answers its whole body (with `secret`).
async fn enrollment_token(server: &TestServer, request: Value) -> Value {
    let (status, body) = server
        .admin(Method::POST, "/v1/enrollment-tokens", Some(request))
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn enroll(server: &TestServer, token: &str, name: &str) -> (u16, Value) {
    call(
        server.as_(token, Method::POST, "/v1/enroll"),
        Some(json!({ "name": name, "labels": { "site": "lab" } })),
    )
    .await
}

#[tokio::test]
async fn of_instances_racing_for_an_enrollment_tokens_last_uses_exactly_that_many_win() {
    let server = TestServer::start_admin().await;
    for uses in [1, 3] {
        let token = enrollment_token(
            &server,
            json!({"name": "fleet", "roles": ["inference-client"], "uses": uses, "labels": {"fleet": "a"}}),
        )
        .await;
        let secret = token["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("kpe_"));
        assert_eq!(token["uses_left"], uses);
        let racers = (0..8).map(|i| {
            let secret = secret.clone();
            let server = &server;
            async move { enroll(server, &secret, &format!("jan-{uses}-{i}")).await }
        });
        let answers = futures_util::future::join_all(racers).await;
        let won: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == 201)
            .map(|(_, body)| body)
            .collect();
        assert_eq!(won.len(), uses as usize, "{answers:?}");
        assert!(
            answers.iter().all(|(status, body)| *status == 201
                || (*status == 401 && body["code"] == "invalid_enrollment_token")),
            "{answers:?}"
        );
        // Each winner is a registered instance with its first key, once.
        for body in won {
            let key = body["secret"].as_str().unwrap();
            assert!(key.starts_with("kpi_"));
            assert_eq!(
                body["instance"]["labels"],
                json!({"fleet": "a", "site": "lab"})
            );
            assert!(
                body["instance"]["allowed_scopes"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("inference:chat"))
            );
            let (status, me) = call(server.as_(key, Method::GET, "/v1/self"), None).await;
            assert_eq!(status, 200, "{me}");
            assert_eq!(me["instance_id"], body["instance"]["id"]);
            assert_eq!(me["instance_name"], body["instance"]["name"]);
            assert!(me.get("secret").is_none());
        }
    }

    // An expired or revoked token, or a key of another kind, gets 401.
    let short = enrollment_token(
        &server,
        json!({"name": "x", "scopes": ["models:read"], "expires_in": 1}),
    )
    .await;
    let revoked = enrollment_token(&server, json!({"name": "y", "scopes": ["models:read"]})).await;
    let (status, _) = server
        .admin(
            Method::POST,
            &format!(
                "/v1/enrollment-tokens/{}/revoke",
                revoked["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        enroll(&server, revoked["secret"].as_str().unwrap(), "late")
            .await
            .0,
        401
    );
    eventually(Duration::from_secs(10), "the token to expire", || async {
        (enroll(&server, short["secret"].as_str().unwrap(), "later")
            .await
            .0
            == 401)
            .then_some(())
    })
    .await;
    assert_eq!(
        enroll(&server, crate::support::BOOTSTRAP, "bootstrap")
            .await
            .0,
        401
    );
    // A failed enrollment spent nothing: a name clash leaves the use.
    let token = enrollment_token(&server, json!({"name": "z", "scopes": ["models:read"]})).await;
    let secret = token["secret"].as_str().unwrap();
    server.instance("taken", &["models:read"]).await;
    assert_eq!(enroll(&server, secret, "taken").await.0, 409);
    assert_eq!(enroll(&server, secret, "fresh").await.0, 201);
    server.stop().await.unwrap();
}

/// The audit entries of `action` on the key `key_id`, newest first.
async fn audited(server: &TestServer, action: &str, key_id: &str) -> Vec<Value> {
    let (_, page) = server
        .admin(
            Method::GET,
            &format!("/v1/audit?action={action}&target={key_id}"),
            None,
        )
        .await;
    page["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn an_operators_rotation_is_final_for_the_old_key() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let id = key["id"].as_str().unwrap();
    let leaked = key["secret"].as_str().unwrap();
    // The key leaked; an operator rotates it with a grace window so the
    // instance can pick up the successor.
    let (status, rotated) = call(
        server.as_(
            crate::support::BOOTSTRAP,
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
        ),
        Some(json!({"grace_seconds": 600})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let successor = rotated["secret"].as_str().unwrap();
    // Whoever else holds the old key cannot undo that rotation and walk
    // away with a fresh key: 409, and the successor stays.
    let (status, refused) = call(server.as_(leaked, Method::POST, "/v1/self/rotate"), None).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "conflict");
    assert_eq!(
        call(server.as_(successor, Method::GET, "/v1/self"), None)
            .await
            .0,
        200,
        "the operator's successor still works"
    );
    let (_, old) = server
        .admin(Method::GET, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(old["rotated_to"], rotated["id"]);
    // The attempt is audited with the caller's address, and no key.
    let entries = audited(&server, "key.rotate", id).await;
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{entries:?}");
    assert_eq!(denied[0]["actor"], format!("api_key:{id}"));
    assert_eq!(denied[0]["client_ip"], "127.0.0.1");
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains(leaked) && !text.contains(successor));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_holder_may_retry_only_its_own_rotation_and_only_for_minutes() {
    let url = fresh_database().await;
    let clock = keyplane_server::clock::ManualClock::at(chrono::Utc::now());
    let app =
        keyplane_server::App::build_with_clock(admin_settings_for(&url), Arc::new(clock.clone()))
            .await
            .unwrap();
    let server = TestServer::from_app(app);
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let old = key["secret"].as_str().unwrap();
    let (status, first) = call(
        server.as_(old, Method::POST, "/v1/self/rotate"),
        Some(json!({"grace_seconds": 3600})),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    // Within minutes, the lost answer is made again.
    clock.advance(chrono::Duration::minutes(5));
    let (status, second) = call(server.as_(old, Method::POST, "/v1/self/rotate"), None).await;
    assert_eq!(status, 201, "{second}");
    // Long after, even an unused successor stays: the old key is spent.
    clock.advance(chrono::Duration::minutes(11));
    let (status, _) = call(server.as_(old, Method::POST, "/v1/self/rotate"), None).await;
    assert_eq!(status, 409);
    let newest = second["secret"].as_str().unwrap();
    assert_eq!(
        call(server.as_(newest, Method::GET, "/v1/self"), None)
            .await
            .0,
        200
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_instance_can_be_barred_from_rotating_its_own_keys() {
    let server = TestServer::start_admin().await;
    let (status, instance) = server
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({"name": "pinned", "allowed_scopes": ["inference:chat"], "self_rotation": false})),
        )
        .await;
    assert_eq!(status, 201, "{instance}");
    assert_eq!(instance["self_rotation"], false);
    let id = instance["id"].as_str().unwrap();
    let key = server
        .key(id, json!({"name": "k", "scopes": ["inference:chat"]}))
        .await;
    let secret = key["secret"].as_str().unwrap();
    let (status, refused) = call(server.as_(secret, Method::POST, "/v1/self/rotate"), None).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        call(server.as_(secret, Method::GET, "/v1/self"), None)
            .await
            .0,
        200,
        "reading its own key is still allowed"
    );
    let entries = audited(&server, "key.rotate", key["id"].as_str().unwrap()).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["outcome"], "denied");
    // Switched back on, it may.
    let (status, changed) = server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{id}"),
            Some(json!({"self_rotation": true})),
        )
        .await;
    assert_eq!((status, &changed["self_rotation"]), (200, &json!(true)));
    let (status, _) = call(server.as_(secret, Method::POST, "/v1/self/rotate"), None).await;
    assert_eq!(status, 201);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_holder_rotating_in_a_loop_is_slowed_down() {
    let url = fresh_database().await;
    let mut settings = admin_settings_for(&url);
    settings.limits.self_rotations_per_hour = 3;
    let server = TestServer::start_with(settings).await;
    let instance = server.instance("loop", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let mut secret = key["secret"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, next) = call(
            server.as_(&secret, Method::POST, "/v1/self/rotate"),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
        assert_eq!(status, 201, "{next}");
        secret = next["secret"].as_str().unwrap().to_owned();
    }
    let response = server
        .as_(&secret, Method::POST, "/v1/self/rotate")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // The budget is the instance's, not the key's; its keys still work.
    assert_eq!(
        call(server.as_(&secret, Method::GET, "/v1/self"), None)
            .await
            .0,
        200
    );
    let (_, keys) = server
        .admin(
            Method::GET,
            &format!("/v1/keys?instance_id={instance}"),
            None,
        )
        .await;
    assert_eq!(
        keys["items"].as_array().unwrap().len(),
        4,
        "no key past the budget"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_holder_reads_and_rotates_its_own_key() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "rotate_after": 600}),
        )
        .await;
    let old = key["secret"].as_str().unwrap();
    let (status, me) = call(server.as_(old, Method::GET, "/v1/self"), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["rotate_after"], 600);
    assert_eq!(me["rotation_due"], false);
    assert_eq!(me["effective_scopes"], json!(["inference:chat"]));
    let created: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(me["created_at"].clone()).unwrap();
    let due: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(me["rotation_due_at"].clone()).unwrap();
    assert_eq!((due - created).num_seconds(), 600);

    let (status, rotated) = call(
        server.as_(old, Method::POST, "/v1/self/rotate"),
        Some(json!({"grace_seconds": 60})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["secret"].as_str().unwrap();
    assert_eq!(rotated["rotated_from"], key["id"]);
    assert_eq!(rotated["rotate_after"], 600, "the policy carries over");
    // The old key lives on for the grace window.
    let (status, me) = call(server.as_(old, Method::GET, "/v1/self"), None).await;
    assert_eq!((status, me["status"].as_str()), (200, Some("rotating")));
    // A holder that lost the answer asks again with the old key: the unused
    // successor is replaced, so the holder always ends up with a key it knows.
    let (status, again) = call(server.as_(old, Method::POST, "/v1/self/rotate"), None).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(
        call(server.as_(new, Method::GET, "/v1/self"), None).await.0,
        401
    );
    let new = again["secret"].as_str().unwrap();
    // Once the successor has been used, the old key cannot rotate again.
    assert_eq!(
        call(server.as_(new, Method::GET, "/v1/self"), None).await.0,
        200
    );
    let (status, _) = call(server.as_(old, Method::POST, "/v1/self/rotate"), None).await;
    assert_eq!(status, 409);
    // With no grace, the predecessor stops at once.
    let (status, newest) = call(
        server.as_(new, Method::POST, "/v1/self/rotate"),
        Some(json!({"grace_seconds": 0})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        call(server.as_(new, Method::GET, "/v1/self"), None).await.0,
        401
    );
    let newest = newest["secret"].as_str().unwrap();
    assert_eq!(
        call(server.as_(newest, Method::GET, "/v1/self"), None)
            .await
            .0,
        200
    );
    // A key of an instance that may be used only from other networks is
    // refused here too, as nodes refuse it.
    let fenced = server
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({"name": "fenced", "allowed_scopes": ["inference:chat"], "allowed_cidrs": ["10.0.0.0/8"]})),
        )
        .await
        .1;
    let fenced_key = server
        .key(
            fenced["id"].as_str().unwrap(),
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let fenced_key = fenced_key["secret"].as_str().unwrap();
    assert_eq!(
        call(server.as_(fenced_key, Method::GET, "/v1/self"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(
            server.as_(fenced_key, Method::POST, "/v1/self/rotate"),
            None
        )
        .await
        .0,
        401
    );
    // Garbage, other kinds of keys and bad bodies are refused cleanly.
    assert_eq!(
        call(server.as_("kpi_nonsense", Method::GET, "/v1/self"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        call(
            server.as_(crate::support::BOOTSTRAP, Method::GET, "/v1/self"),
            None
        )
        .await
        .0,
        401
    );
    let (status, body) = call(
        server.as_(newest, Method::POST, "/v1/self/rotate"),
        Some(json!({"grace_seconds": -1})),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("grace_seconds"))
    );
    // The holder's own rotations are in the audit log, by the key.
    let (_, entries) = server
        .admin(Method::GET, "/v1/audit?action=key.rotate", None)
        .await;
    let items = entries["items"].as_array().unwrap();
    let actors: Vec<&str> = items.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert!(
        actors.iter().all(|a| a.starts_with("api_key:")),
        "{actors:?}"
    );
    let outcomes: Vec<&str> = items.iter().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "success").count(),
        3,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "denied").count(),
        1,
        "the refused retry is audited too"
    );
    server.stop().await.unwrap();
}

fn fast(url: &str) -> keyplane_server::Settings {
    keyplane_server::Settings {
        scheduler_interval: Duration::from_millis(100),
        webhook_retry_base: Duration::from_millis(200),
        ..admin_settings_for(url)
    }
}

async fn leader(server: &TestServer) -> bool {
    let text = server.get("/metrics").await.text().await.unwrap();
    text.lines()
        .any(|line| line == "keyplane_scheduler_leader 1")
}

#[tokio::test]
async fn two_processes_run_each_scheduled_job_once_and_one_takes_over_when_the_other_stops() {
    let url = fresh_database().await;
    let first = TestServer::start_with(fast(&url)).await;
    let second = TestServer::start_with(fast(&url)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    let _receiving = receiver.clone().start(listener).await;
    let (status, _) = first
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": hook_url, "events": ["key.expiring"]})),
        )
        .await;
    assert_eq!(status, 201);

    let instance = first.instance("jan", &["inference:chat"]).await;
    let key = |expires_in: i64| {
        first.key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": expires_in}),
        )
    };
    let expiring = key(3 * 86_400).await; // within 7 days: one warning, at 7
    let ending = key(1).await;
    let marker = key(2).await;
    let audit_of = |action: &'static str, id: Value| {
        let first = &first;
        async move {
            let (_, page) = first
                .admin(
                    Method::GET,
                    &format!("/v1/audit?action={action}&target={}", id.as_str().unwrap()),
                    None,
                )
                .await;
            page["items"].as_array().unwrap().len()
        }
    };
    // Once the marker's end is announced, both processes have run their
    // scheduler loops many times over the first two keys.
    eventually(Duration::from_secs(30), "the marker key's end", || async {
        (audit_of("key.expired", marker["id"].clone()).await == 1).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the expiry warning delivered",
        || async { (!receiver.of("key.expiring").is_empty()).then_some(()) },
    )
    .await;
    for _ in 0..2 {
        // Another full round of both loops.
        let later = key(1).await;
        eventually(Duration::from_secs(30), "a later key's end", || async {
            (audit_of("key.expired", later["id"].clone()).await == 1).then_some(())
        })
        .await;
    }
    assert_eq!(audit_of("key.expiring", expiring["id"].clone()).await, 1);
    assert_eq!(audit_of("key.expired", ending["id"].clone()).await, 1);
    // One warning per key (the short-lived ones get theirs at 1 day), each
    // delivered once.
    let warnings = receiver.of("key.expiring");
    let mut warned: Vec<&Value> = warnings.iter().map(|w| &w["data"]["key_id"]).collect();
    warned.sort_by_key(|id| id.to_string());
    warned.dedup();
    assert_eq!(warned.len(), warnings.len(), "{warnings:?}");
    let warning = warnings
        .iter()
        .find(|w| w["data"]["key_id"] == expiring["id"])
        .unwrap();
    assert_eq!(warning["data"]["days_left"], 7);
    // The end of a key reaches nodes through the revocation log.
    let (_, ended) = first
        .admin(
            Method::GET,
            &format!("/v1/keys/{}", ending["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(ended["status"], "expired");

    // Exactly one process leads; when it stops, the other takes over.
    let leads = (leader(&first).await, leader(&second).await);
    assert!(
        leads == (true, false) || leads == (false, true),
        "{leads:?}"
    );
    let (survivor, stopped) = if leads.0 {
        (second, first)
    } else {
        (first, second)
    };
    stopped.stop().await.unwrap();
    eventually(Duration::from_secs(30), "the survivor to lead", || async {
        leader(&survivor).await.then_some(())
    })
    .await;
    let after = survivor
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "expires_in": 1}),
        )
        .await;
    eventually(
        Duration::from_secs(30),
        "the survivor's scheduler at work",
        || async {
            let (_, page) = survivor
                .admin(
                    Method::GET,
                    &format!(
                        "/v1/audit?action=key.expired&target={}",
                        after["id"].as_str().unwrap()
                    ),
                    None,
                )
                .await;
            (page["items"].as_array().unwrap().len() == 1).then_some(())
        },
    )
    .await;
    survivor.stop().await.unwrap();
}

#[tokio::test]
async fn a_queued_delivery_survives_a_restart_and_reaches_a_receiver_that_was_down() {
    let url = fresh_database().await;
    let server = TestServer::start_with(fast(&url)).await;
    // Nothing listens on this port yet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let (status, hook) = server
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": format!("http://{address}/hook"), "events": ["key.revoked", "instance.decommissioned"]})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    assert!(hook["secret"].as_str().unwrap().starts_with("whsec_"));
    let deliveries = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
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
            Some(json!({"reason": "leaked"})),
        )
        .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(30), "a failed attempt", || async {
        let (_, page) = server.admin(Method::GET, &deliveries, None).await;
        let item = page["items"][0].clone();
        (item["attempts"].as_i64() >= Some(1)
            && item["status"] == "pending"
            && item["last_error"].is_string())
        .then_some(())
    })
    .await;
    server.stop().await.unwrap();

    // A new process on the same database, and the receiver up at last.
    let restarted = TestServer::start_with(fast(&url)).await;
    let receiver = Receiver::default();
    let _receiving = receiver
        .clone()
        .start(tokio::net::TcpListener::bind(address).await.unwrap())
        .await;
    let delivered = eventually(
        Duration::from_secs(30),
        "the delivery after the restart",
        || async {
            let (_, page) = restarted.admin(Method::GET, &deliveries, None).await;
            let item = page["items"][0].clone();
            (item["status"] == "delivered").then_some(item)
        },
    )
    .await;
    assert!(delivered["attempts"].as_i64().unwrap() >= 2, "{delivered}");
    let got = receiver.of("key.revoked");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"]["key_id"], key["id"]);
    assert_eq!(got[0]["data"]["reason"], "leaked");
    let (headers, _) = receiver.got.lock().unwrap()[0].clone();
    assert_eq!(headers["webhook-id"], delivered["id"].as_str().unwrap());
    assert!(
        headers["webhook-signature"]
            .to_str()
            .unwrap()
            .starts_with("v1,")
    );
    // Events other than those asked for are not sent; decommissioning is.
    let (status, _) = restarted
        .admin(Method::DELETE, &format!("/v1/instances/{instance}"), None)
        .await;
    assert_eq!(status, 204);
    eventually(
        Duration::from_secs(30),
        "the decommission event",
        || async { (!receiver.of("instance.decommissioned").is_empty()).then_some(()) },
    )
    .await;
    // Bad registrations are refused with the field named.
    for (body, field) in [
        (json!({"url": "ftp://x", "events": ["key.revoked"]}), "url"),
        (
            json!({"url": "http://127.0.0.1:1/h", "events": ["key.exploded"]}),
            "events[0]",
        ),
        (
            json!({"url": "http://127.0.0.1:1/h", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://user:pw@example.com/h", "events": ["key.revoked"]}),
            "url",
        ),
    ] {
        let (status, answer) = restarted
            .admin(Method::POST, "/v1/webhooks", Some(body))
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some(field)),
            "{answer}"
        );
    }
    restarted.stop().await.unwrap();
}
