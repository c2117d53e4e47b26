//! The node-facing API: introspection, forward auth, the revocation stream.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keyplane_server::App;
use keyplane_server::clock::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, admin_settings_for, eventually, fresh_database};

/// A server with one instance, one node and one key.
struct Fixture {
    server: TestServer,
    instance: String,
    node_id: String,
    node_key: String,
    key: Value,
}

impl Fixture {
    async fn on(server: TestServer) -> Fixture {
        let instance = server
            .instance(
                "jan-1",
                &["inference:chat", "inference:embeddings", "models:read"],
            )
            .await;
        let (_, node) = server
            .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-1"})))
            .await;
        let key = server
            .key(
                &instance,
                json!({"name": "k", "scopes": ["inference:chat", "models:read"]}),
            )
            .await;
        Fixture {
            instance,
            node_id: node["id"].as_str().unwrap().to_owned(),
            node_key: node["secret"].as_str().unwrap().to_owned(),
            key,
            server,
        }
    }

    async fn start() -> Fixture {
        Fixture::on(TestServer::start_admin().await).await
    }

    fn secret(&self) -> &str {
        self.key["secret"].as_str().unwrap()
    }

    fn key_path(&self) -> String {
        format!("/v1/keys/{}", self.key["id"].as_str().unwrap())
    }

    /// Introspects with a form body as this fixture's node.
    async fn introspect(&self, form: &[(&str, &str)]) -> (u16, Value) {
        introspect_at(&self.server, &self.node_key, form).await
    }
}

async fn introspect_at(server: &TestServer, node_key: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = server
        .client
        .post(server.url("/v1/introspect"))
        .bearer_auth(node_key)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn inactive() -> Value {
    json!({"active": false})
}

#[tokio::test]
async fn a_good_key_is_active_with_the_contract_fields() {
    let f = Fixture::start().await;
    let response = f
        .server
        .client
        .post(f.server.url("/v1/introspect"))
        .bearer_auth(&f.node_key)
        .form(&[("token", f.secret()), ("scope", "inference:chat")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cache_control = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "api_key");
    assert_eq!(body["key_id"], f.key["id"]);
    assert_eq!(body["client_id"], f.instance.as_str());
    assert_eq!(body["sub"], f.instance.as_str());
    assert_eq!(body["instance_name"], "jan-1");
    assert_eq!(body["scope"], "inference:chat models:read");
    assert_eq!(body["aud"], json!([f.node_id]));
    assert!(body["iss"].as_str().unwrap().starts_with("urn:keyplane:"));
    for claim in ["exp", "iat", "nbf"] {
        assert!(body[claim].is_i64(), "{claim}");
    }
    assert_eq!(body["cache_ttl"], 30);
    assert_eq!(cache_control, "private, max-age=30");

    // JSON bodies and HTTP Basic (node id + node key) work too.
    let basic = f
        .server
        .client
        .post(f.server.url("/v1/introspect"))
        .basic_auth(&f.node_id, Some(&f.node_key))
        .json(&json!({"token": f.secret()}))
        .send()
        .await
        .unwrap();
    let body: Value = basic.json().await.unwrap();
    assert_eq!(body["active"], true);
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn only_a_live_node_key_may_introspect() {
    let f = Fixture::start().await;
    let (_, admin) = f
        .server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "a", "role": "admin"})),
        )
        .await;
    let (_, other_node) = f
        .server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-2"})))
        .await;
    let other_key = other_node["secret"].as_str().unwrap();
    f.server
        .admin(
            Method::DELETE,
            &format!("/v1/nodes/{}", other_node["id"].as_str().unwrap()),
            None,
        )
        .await;
    for credential in [
        "",
        "kpn_garbage",
        f.secret(),
        admin["secret"].as_str().unwrap(),
        crate::support::BOOTSTRAP,
        other_key,
    ] {
        let (status, body) = introspect_at(&f.server, credential, &[("token", f.secret())]).await;
        assert_eq!(status, 401, "{credential:.8}: {body}");
    }
    // HTTP Basic with another node's id is refused.
    let response = f
        .server
        .client
        .post(f.server.url("/v1/introspect"))
        .basic_auth(uuid::Uuid::new_v4(), Some(&f.node_key))
        .form(&[("token", f.secret())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn every_bad_key_answers_exactly_inactive() {
    let url = fresh_database().await;
    let clock = ManualClock::at(Utc::now());
    let app = App::build_with_clock(admin_settings_for(&url), Arc::new(clock.clone()))
        .await
        .unwrap();
    let f = Fixture::on(TestServer::from_app(app)).await;
    let server = &f.server;
    let issue = |body: Value| server.key(&f.instance, body);

    let unknown = keyplane_domain::KeySecret::generate(keyplane_domain::KeyKind::Instance).unwrap();
    let mut bad_checksum = f.secret().to_owned();
    bad_checksum.replace_range(41.., if f.secret().ends_with('A') { "B" } else { "A" });
    let node_key = f.node_key.clone();
    for token in [
        unknown.expose(),
        "kpi_short",
        "",
        "not a key at all",
        &bad_checksum,
        &node_key,
    ] {
        assert_eq!(
            f.introspect(&[("token", token)]).await,
            (200, inactive()),
            "{token:.8}"
        );
    }

    // Revoked, disabled.
    let revoked = issue(json!({"name": "r", "scopes": ["inference:chat"]})).await;
    server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;
    let disabled = issue(json!({"name": "d", "scopes": ["inference:chat"]})).await;
    server
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{}", disabled["id"].as_str().unwrap()),
            Some(json!({"enabled": false})),
        )
        .await;
    // Not for this node; outside the instance's networks; short of scope.
    let (_, elsewhere) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-9"})))
        .await;
    let other_audience =
        issue(json!({"name": "a", "scopes": ["inference:chat"], "audience": [elsewhere["id"]]}))
            .await;
    for key in [&revoked, &disabled, &other_audience] {
        let token = key["secret"].as_str().unwrap();
        assert_eq!(
            f.introspect(&[("token", token)]).await,
            (200, inactive()),
            "{}",
            key["name"]
        );
    }
    assert_eq!(
        f.introspect(&[("token", f.secret()), ("scope", "inference:embeddings")])
            .await,
        (200, inactive()),
        "scope short"
    );
    assert_eq!(
        f.introspect(&[("token", f.secret()), ("scope", "made:up")])
            .await,
        (200, inactive()),
        "unknown scope"
    );
    server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{}", f.instance),
            Some(json!({"allowed_cidrs": ["10.0.0.0/8"]})),
        )
        .await;
    assert_eq!(
        f.introspect(&[("token", f.secret()), ("client_ip", "192.168.1.5")])
            .await,
        (200, inactive())
    );
    assert_eq!(
        f.introspect(&[("token", f.secret())]).await,
        (200, inactive()),
        "no address, networks set"
    );
    assert_eq!(
        f.introspect(&[("token", f.secret()), ("client_ip", "10.9.8.7")])
            .await
            .1["active"],
        true
    );
    server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{}", f.instance),
            Some(json!({"allowed_cidrs": []})),
        )
        .await;

    // Past the grace window of a rotation; expired.
    let rotated =
        issue(json!({"name": "g", "scopes": ["inference:chat"], "expires_in": 7200})).await;
    server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", rotated["id"].as_str().unwrap()),
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    let rotated_token = rotated["secret"].as_str().unwrap();
    assert_eq!(
        f.introspect(&[("token", rotated_token)]).await.1["active"],
        true,
        "inside its grace"
    );
    clock.advance(chrono::Duration::seconds(61));
    assert_eq!(
        f.introspect(&[("token", rotated_token)]).await,
        (200, inactive()),
        "past its grace"
    );
    clock.advance(chrono::Duration::seconds(7200));
    assert_eq!(
        f.introspect(&[("token", f.secret())]).await.1["active"],
        true,
        "90 days by default"
    );
    let short = issue(json!({"name": "s", "scopes": ["inference:chat"], "expires_in": 60})).await;
    clock.advance(chrono::Duration::seconds(61));
    assert_eq!(
        f.introspect(&[("token", short["secret"].as_str().unwrap())])
            .await,
        (200, inactive()),
        "expired"
    );

    // Suspended, then decommissioned.
    server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{}", f.instance),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(
        f.introspect(&[("token", f.secret())]).await,
        (200, inactive()),
        "suspended"
    );
    server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{}", f.instance),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(
        f.introspect(&[("token", f.secret())]).await.1["active"],
        true,
        "resumed"
    );
    server
        .admin(
            Method::DELETE,
            &format!("/v1/instances/{}", f.instance),
            None,
        )
        .await;
    assert_eq!(
        f.introspect(&[("token", f.secret())]).await,
        (200, inactive()),
        "decommissioned"
    );
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_role_change_narrows_a_cached_key_at_once() {
    let f = Fixture::start().await;
    let key = f
        .server
        .key(
            &f.instance,
            json!({"name": "role", "roles": ["inference-client"]}),
        )
        .await;
    let token = key["secret"].as_str().unwrap();
    let (_, before) = f
        .introspect(&[("token", token), ("scope", "inference:embeddings")])
        .await;
    assert_eq!(before["active"], true);
    f.server
        .admin(
            Method::PUT,
            "/v1/roles/inference-client",
            Some(json!({"scopes": ["inference:chat"]})),
        )
        .await;
    let (_, after) = f
        .introspect(&[("token", token), ("scope", "inference:embeddings")])
        .await;
    assert_eq!(after, inactive());
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_revoked_through_one_keyplane_is_inactive_at_another() {
    let url = fresh_database().await;
    let first = TestServer::start_with(admin_settings_for(&url)).await;
    let second = TestServer::start_with(admin_settings_for(&url)).await;
    let f = Fixture::on(first).await;
    // The second process caches the key as good.
    let (_, cached) = introspect_at(&second, &f.node_key, &[("token", f.secret())]).await;
    assert_eq!(cached["active"], true);

    let (status, _) = f
        .server
        .admin(Method::POST, &format!("{}/revoke", f.key_path()), None)
        .await;
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(10),
        "the second keyplane to see the revocation",
        || async {
            let (_, body) = introspect_at(&second, &f.node_key, &[("token", f.secret())]).await;
            (body == inactive()).then_some(())
        },
    )
    .await;
    second.stop().await.unwrap();
    f.server.stop().await.unwrap();
}

/// One server-sent event: its name, id and data.
type Sse = (String, String, Value);

/// Reads the next `count` server-sent events.
async fn read_events(response: &mut reqwest::Response, count: usize) -> Vec<Sse> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("events arrive in time")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim().to_owned();
                }
            }
            if !data.is_empty() {
                events.push((name, id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

/// Revocations made at once, by many requests, all reach a stream through
/// the replica's shared reader of the log, in id order. (The ordering of
/// commits itself is `revocation_ids_are_committed_in_order`'s: this one
/// does not provoke that race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_all_reach_the_stream_in_order() {
    let f = Fixture::start().await;
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = f
            .server
            .key(
                &f.instance,
                json!({"name": format!("c{i}"), "scopes": ["inference:chat"]}),
            )
            .await;
        keys.push(key["id"].as_str().unwrap().to_owned());
    }
    let mut live = f
        .server
        .client
        .get(f.server.url("/v1/revocations/stream"))
        .bearer_auth(&f.node_key)
        .send()
        .await
        .unwrap();
    assert_eq!(read_events(&mut live, 1).await[0].0, "ready");

    let paths: Vec<String> = keys
        .iter()
        .map(|id| format!("/v1/keys/{id}/revoke"))
        .collect();
    let revokes = paths
        .iter()
        .map(|path| f.server.admin(Method::POST, path, None));
    for (status, body) in futures_util::future::join_all(revokes).await {
        assert_eq!(status, 200, "{body}");
    }
    let mut events = Vec::new();
    while events.len() < keys.len() {
        events.extend(read_events(&mut live, 1).await);
    }
    let ids: Vec<i64> = events
        .iter()
        .map(|(_, id, _)| id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut seen: Vec<String> = events
        .iter()
        .map(|(_, _, e)| e["key_id"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    keys.sort();
    assert_eq!(seen, keys);
    f.server.stop().await.unwrap();
}

/// The log is read "after the last id I read", so a row must never become
/// visible before one with a lower id: while one change holds a revocation
/// uncommitted, another's waits for it instead of committing a higher id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ids_are_committed_in_order() {
    use keyplane_store::revocations;
    use sqlx::{Connection, PgConnection};
    let url = crate::support::fresh_database().await;
    // Building a server applies the migrations.
    let server = TestServer::start_with(crate::support::settings_for(&url)).await;
    let mut reader = PgConnection::connect(&url).await.unwrap();
    let before = revocations::latest(&mut reader).await.unwrap();

    let mut first = PgConnection::connect(&url).await.unwrap();
    let mut first_tx = first.begin().await.unwrap();
    revocations::record(
        &mut first_tx,
        &[uuid::Uuid::new_v4()],
        "revoked",
        Utc::now(),
    )
    .await
    .unwrap();
    let mut second = tokio::spawn({
        let url = url.clone();
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            revocations::record(&mut tx, &[uuid::Uuid::new_v4()], "revoked", Utc::now())
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    });
    // The second waits for the first; nothing past the first's id shows.
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(
        waited.is_err(),
        "the second committed while the first was open"
    );
    assert_eq!(revocations::latest(&mut reader).await.unwrap(), before);
    first_tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second commits once the first has")
        .unwrap();
    let rows = revocations::after(&mut reader, before, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].id < rows[1].id);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_revocation_stream_announces_keys_and_replays_after_a_reconnect() {
    let f = Fixture::start().await;
    let stream = |last: Option<String>| {
        let request = f
            .server
            .client
            .get(f.server.url("/v1/revocations/stream"))
            .bearer_auth(&f.node_key);
        match last {
            Some(id) => request.header("last-event-id", id),
            None => request,
        }
        .send()
    };
    let mut live = stream(None).await.unwrap();
    assert_eq!(live.status(), 200);
    assert!(
        live.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    // Nothing to replay: the stream says it is live at once, with the id
    // to resume from.
    let ready = read_events(&mut live, 1).await;
    assert_eq!(ready[0].0, "ready");
    assert!(ready[0].1.parse::<i64>().is_ok(), "{ready:?}");
    let metrics = f.server.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "keyplane_revocation_streams 1"),
        "{metrics}"
    );

    f.server
        .admin(Method::POST, &format!("{}/revoke", f.key_path()), None)
        .await;
    let first = read_events(&mut live, 1).await;
    assert_eq!(first[0].0, "revocation");
    assert_eq!(first[0].2["key_id"], f.key["id"]);
    assert_eq!(first[0].2["reason"], "revoked");
    assert!(first[0].1.parse::<i64>().unwrap() > ready[0].1.parse::<i64>().unwrap());

    // Two more stop working while the node is away; it gets both on return.
    let a = f
        .server
        .key(
            &f.instance,
            json!({"name": "a", "scopes": ["inference:chat"]}),
        )
        .await;
    let b = f
        .server
        .key(
            &f.instance,
            json!({"name": "b", "scopes": ["inference:chat"]}),
        )
        .await;
    f.server
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{}", a["id"].as_str().unwrap()),
            Some(json!({"enabled": false})),
        )
        .await;
    f.server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", b["id"].as_str().unwrap()),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    // Both, then `ready` (with the newest one's id): only then may the node
    // trust its cache again.
    let mut again = stream(Some(first[0].1.clone())).await.unwrap();
    let replayed = read_events(&mut again, 3).await;
    let seen: Vec<(&str, Value, Value)> = replayed
        .iter()
        .map(|(name, _, e)| (name.as_str(), e["key_id"].clone(), e["reason"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("revocation", a["id"].clone(), json!("disabled")),
            ("revocation", b["id"].clone(), json!("rotated")),
            ("ready", Value::Null, Value::Null)
        ]
    );
    assert!(replayed[0].1.parse::<i64>().unwrap() > first[0].1.parse::<i64>().unwrap());
    assert_eq!(replayed[2].1, replayed[1].1);

    // Retiring the node ends its stream.
    let mut closing = stream(None).await.unwrap();
    f.server
        .admin(Method::DELETE, &format!("/v1/nodes/{}", f.node_id), None)
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = closing.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the retired node's stream ended");

    let (status, _) = crate::support::call(
        f.server
            .as_("kpn_nope", Method::GET, "/v1/revocations/stream"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn forward_auth_allows_denies_and_names_the_caller() {
    let url = fresh_database().await;
    let mut settings = admin_settings_for(&url);
    settings.routes = keyplane_domain::RouteMap::parse("GET /health=public")
        .unwrap()
        .then(keyplane_domain::RouteMap::defaults());
    let f = Fixture::on(TestServer::start_with(settings).await).await;
    let check = |key: Option<&str>, method: &str, uri: &str| {
        let request = f
            .server
            .client
            .get(f.server.url("/v1/authz/check"))
            .header("x-keyplane-node-key", &f.node_key)
            .header("x-original-method", method)
            .header("x-original-uri", uri)
            .header("x-real-ip", "127.0.0.1");
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
        .send()
    };
    let allowed = check(Some(f.secret()), "POST", "/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["x-keyplane-instance"],
        f.instance.as_str()
    );
    assert_eq!(
        allowed.headers()["x-keyplane-key-id"],
        f.key["id"].as_str().unwrap()
    );
    assert_eq!(
        allowed.headers()["x-keyplane-scopes"],
        "inference:chat models:read"
    );

    let short = check(Some(f.secret()), "POST", "/v1/embeddings")
        .await
        .unwrap();
    assert_eq!(short.status(), 403);
    let unmapped = check(Some(f.secret()), "POST", "/v1/shutdown")
        .await
        .unwrap();
    assert_eq!(unmapped.status(), 403);
    let bad = check(Some("kpi_nope"), "POST", "/v1/chat/completions")
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(bad.headers()["www-authenticate"], "Bearer");
    let missing = check(None, "GET", "/v1/models").await.unwrap();
    assert_eq!(missing.status(), 401);
    let public = check(None, "GET", "/health").await.unwrap();
    assert_eq!(public.status(), 200);
    // Without a node key, forward auth is refused outright.
    let anonymous = f
        .server
        .client
        .get(f.server.url("/v1/authz/check"))
        .bearer_auth(f.secret())
        .header("x-original-method", "POST")
        .header("x-original-uri", "/v1/chat/completions")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn use_is_recorded_in_batches_not_per_request() {
    let url = fresh_database().await;
    let f = Fixture::on(TestServer::start_with(admin_settings_for(&url)).await).await;
    // Count every write of last_used_at as PostgreSQL sees it.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "create table used_writes (n bigint not null);
         create function count_used_write() returns trigger language plpgsql as $$
         begin insert into used_writes values (1); return new; end $$;
         create trigger count_used_writes after update of last_used_at on api_keys
           for each row when (old.last_used_at is distinct from new.last_used_at)
           execute function count_used_write();",
    )
    .execute(&db)
    .await
    .unwrap();
    for _ in 0..200 {
        assert_eq!(
            f.introspect(&[("token", f.secret())]).await.1["active"],
            true
        );
    }
    let path = f.key_path();
    eventually(
        Duration::from_secs(15),
        "last_used_at to be written",
        || async {
            let (_, key) = f.server.admin(Method::GET, &path, None).await;
            key["last_used_at"].is_string().then_some(())
        },
    )
    .await;
    // Two hundred uses within a second or two: one write per flush they span
    // (the flush runs every 5 s and writes each key's newest use once).
    let writes: i64 = sqlx::query_scalar("select count(*) from used_writes")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!((1..=3).contains(&writes), "{writes} writes for 200 uses");
    // The node's last sighting is written by the same flush, just after.
    let node_path = format!("/v1/nodes/{}", f.node_id);
    eventually(
        Duration::from_secs(15),
        "last_seen_at to be written",
        || async {
            let (_, node) = f.server.admin(Method::GET, &node_path, None).await;
            node["last_seen_at"].is_string().then_some(())
        },
    )
    .await;
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_signed_answer_verifies_against_the_jwks_and_not_after_tampering() {
    let f = Fixture::start().await;
    let response = f
        .server
        .client
        .post(f.server.url("/v1/introspect"))
        .bearer_auth(&f.node_key)
        .header("accept", "application/token-introspection+jwt")
        .form(&[("token", f.secret())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/token-introspection+jwt"
    );
    let jwt = response.text().await.unwrap();
    let jwks: Value = f
        .server
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();

    let verify = |jwt: &str, jwks: &Value| -> Result<Value, jsonwebtoken::errors::Error> {
        let header = jsonwebtoken::decode_header(jwt)?;
        assert_eq!(header.typ.as_deref(), Some("token-introspection+jwt"));
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"].as_str() == header.kid.as_deref())
            .expect("the kid is in the JWKS");
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("OKP"), Some("Ed25519"))
        );
        let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap())?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&[f.node_id.as_str()]);
        validation.required_spec_claims.clear();
        Ok(jsonwebtoken::decode::<Value>(jwt, &key, &validation)?.claims)
    };
    let claims = verify(&jwt, &jwks).unwrap();
    assert_eq!(claims["token_introspection"]["active"], true);
    assert_eq!(claims["token_introspection"]["key_id"], f.key["id"]);
    assert_eq!(claims["aud"], f.node_id.as_str());

    // Change one character of the payload: the signature no longer holds.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let mut payload = parts[1].clone().into_bytes();
    payload[10] = if payload[10] == b'A' { b'B' } else { b'A' };
    parts[1] = String::from_utf8(payload).unwrap();
    assert!(verify(&parts.join("."), &jwks).is_err());

    // After a rotation, answers are signed with the new key and the old one
    // stays in the JWKS, so the earlier answer still verifies.
    let (status, rotated) = f
        .server
        .admin(Method::POST, "/v1/signing-keys/rotate", None)
        .await;
    assert_eq!(status, 200, "{rotated}");
    let jwks: Value = f
        .server
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_eq!(jwks["keys"][0]["kid"], rotated["kid"]);
    assert!(verify(&jwt, &jwks).is_ok());
    let fresh = f
        .server
        .client
        .post(f.server.url("/v1/introspect"))
        .bearer_auth(&f.node_key)
        .header("accept", "application/token-introspection+jwt")
        .form(&[("token", "kpi_garbage")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
        rotated["kid"].as_str()
    );
    assert_eq!(
        verify(&fresh, &jwks).unwrap()["token_introspection"],
        json!({"active": false})
    );
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_burst_of_inactive_answers_is_audited_once_as_a_probe() {
    let url = fresh_database().await;
    let mut settings = admin_settings_for(&url);
    settings.probe_threshold = 5;
    let f = Fixture::on(TestServer::start_with(settings).await).await;
    for _ in 0..12 {
        let guess =
            keyplane_domain::KeySecret::generate(keyplane_domain::KeyKind::Instance).unwrap();
        assert_eq!(
            f.introspect(&[("token", guess.expose())]).await,
            (200, inactive())
        );
    }
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let rows: Vec<(String, String, serde_json::Value)> = eventually(Duration::from_secs(10), "the probe entry", || {
        let db = db.clone();
        async move {
            let rows: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
                "select actor, outcome, details from audit_log where action = 'introspection.probe_suspected'",
            )
            .fetch_all(&db)
            .await
            .unwrap();
            (!rows.is_empty()).then_some(rows)
        }
    })
    .await;
    assert_eq!(rows.len(), 1, "one entry per node per window");
    assert_eq!(rows[0].0, format!("node:{}", f.node_id));
    assert_eq!(rows[0].1, "denied");
    assert_eq!(rows[0].2["inactive_answers"], 5);
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_outcomes_and_cache_hits() {
    let url = fresh_database().await;
    let f = Fixture::on(
        TestServer::start_with(keyplane_server::Settings {
            metrics_refresh: Duration::from_millis(200),
            ..admin_settings_for(&url)
        })
        .await,
    )
    .await;
    for _ in 0..3 {
        f.introspect(&[("token", f.secret())]).await;
    }
    f.introspect(&[("token", "kpi_garbage")]).await;
    let response = f.server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("keyplane_introspections_total{outcome=\"active\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("keyplane_introspections_total{outcome=\"inactive\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "keyplane_introspections_inactive_by_node_total{{node=\"{}\"}} 1",
            f.node_id
        )),
        "{text}"
    );
    assert!(
        text.contains("keyplane_introspection_cache_lookups_total{result=\"hit\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("keyplane_introspection_cache_lookups_total{result=\"miss\"} 1"),
        "{text}"
    );
    // The database's figures are read in the background, not at scrape time.
    let text = eventually(Duration::from_secs(30), "the key counted", || async {
        let text = f.server.get("/metrics").await.text().await.ok()?;
        text.contains("keyplane_keys{status=\"active\"} 1")
            .then_some(text)
    })
    .await;
    assert!(text.contains("keyplane_keys_expiring_7d 0"), "{text}");
    assert!(text.contains("keyplane_audit_chain_length 3"), "{text}");
    assert!(!text.contains(f.secret()) && !text.contains(&f.node_key));
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_heartbeat_is_shown_on_the_node_and_a_weaker_mode_is_flagged() {
    let url = fresh_database().await;
    let settings = keyplane_server::config::Settings {
        mode: keyplane_domain::Mode::Mixed,
        ..admin_settings_for(&url)
    };
    let f = Fixture::on(TestServer::start_with(settings).await).await;
    let beat = |body: Value| {
        let request = f.server.as_(&f.node_key, Method::POST, "/v1/heartbeat");
        crate::support::call(request, Some(body))
    };
    let node_path = format!("/v1/nodes/{}", f.node_id);

    let (_, node) = f.server.admin(Method::GET, &node_path, None).await;
    assert_eq!(
        (&node["reported"], &node["mode_weaker"]),
        (&Value::Null, &json!(false))
    );

    let (status, answer) = beat(json!({
        "mode": "dev", "version": "0.1.0", "public_routes": ["GET /v1/models=public"]
    }))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (
            &answer["mode"],
            &answer["mode_weaker"],
            &answer["presented_key"],
            &answer["rotation_due"]
        ),
        (
            &json!("mixed"),
            &json!(true),
            &json!("current"),
            &json!(false)
        ),
        "{answer}"
    );
    let (_, node) = f.server.admin(Method::GET, &node_path, None).await;
    assert_eq!(node["reported"]["mode"], "dev");
    assert_eq!(node["reported"]["version"], "0.1.0");
    assert_eq!(
        node["reported"]["public_routes"],
        json!(["GET /v1/models=public"])
    );
    assert_eq!(node["mode_weaker"], true);
    assert!(node["last_seen_at"].is_string());

    let (_, answer) = beat(json!({ "mode": "prod", "version": "0.1.0" })).await;
    assert_eq!(answer["mode_weaker"], false);
    let (_, page) = f.server.admin(Method::GET, "/v1/nodes", None).await;
    assert_eq!(page["items"][0]["mode_weaker"], false);

    // Bad reports are refused with the field named, and change nothing.
    for (body, field) in [
        (json!({ "mode": "turbo", "version": "1" }), "mode"),
        (json!({ "mode": "prod", "version": "" }), "version"),
        (
            json!({ "mode": "prod", "version": "1", "public_routes": ["GET nowhere"] }),
            "public_routes",
        ),
    ] {
        let (status, problem) = beat(body).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some(field)),
            "{problem}"
        );
    }
    let (_, node) = f.server.admin(Method::GET, &node_path, None).await;
    assert_eq!(node["reported"]["mode"], "prod");

    // Only node keys may report.
    let (status, _) = crate::support::call(
        f.server
            .as_(crate::support::BOOTSTRAP, Method::POST, "/v1/heartbeat"),
        Some(json!({ "mode": "prod", "version": "1" })),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_load_that_raced_a_revocation_is_not_cached() {
    let url = fresh_database().await;
    let f = Fixture::on(TestServer::start_with(admin_settings_for(&url)).await).await;
    // A second introspection cache, whose database replies can be held: a
    // load that has read the key as live and has not yet stored it.
    let link = crate::support::FlakyLink::to(&url).await;
    // No ping as the connection is taken: the held reply is the query's own.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&link.url_through(&url))
        .await
        .unwrap();
    let cache = keyplane_server::introspection::Introspector::new(pool, 1000);
    let limits = std::sync::Arc::new(keyplane_server::limits::Limits::new(
        keyplane_server::limits::LimitSettings::default(),
    ));
    let node: uuid::Uuid = f.node_id.parse().unwrap();
    let key_id: uuid::Uuid = f.key["id"].as_str().unwrap().parse().unwrap();
    let now = || Utc::now() + chrono::Duration::seconds(1);
    // The connection is open before the race begins.
    let unknown = keyplane_domain::KeySecret::generate(keyplane_domain::KeyKind::Instance).unwrap();
    assert!(
        cache
            .introspect(unknown.expose(), node, "", None, now(), &limits)
            .await
            .unwrap()
            .is_none()
    );

    // sqlx settles the previous query (a Sync and its reply) before it
    // sends the next: that reply passes, the query's own is held.
    link.stall_replies_after(1);
    let load = tokio::spawn({
        let cache = cache.clone();
        let token = f.secret().to_owned();
        let limits = limits.clone();
        async move {
            cache
                .introspect(&token, node, "", None, now(), &limits)
                .await
        }
    });
    eventually(
        Duration::from_secs(10),
        "the load to read the key",
        || async { (link.held() > 0).then_some(()) },
    )
    .await;
    // The key is revoked while the load holds what it read, and the
    // revocation's event reaches the cache before the load's answer does.
    let (status, _) = f
        .server
        .admin(Method::POST, &format!("{}/revoke", f.key_path()), None)
        .await;
    assert_eq!(status, 200);
    cache.apply(&keyplane_server::events::Event::Key { id: key_id });
    link.set(crate::support::Link::Up);
    // The racing load read the key as live (its answer was held past the
    // revocation): told of the change while it read, it reads again rather
    // than answer or keep what it read.
    let raced = load.await.unwrap().unwrap();
    assert!(
        raced.is_none(),
        "the racing request was answered from a stale read"
    );
    let after = cache
        .introspect(f.secret(), node, "", None, now(), &limits)
        .await
        .unwrap();
    assert!(after.is_none(), "a revoked key was served from the cache");
    f.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_node_holds_few_revocation_streams_and_each_ends_with_its_key() {
    let url = fresh_database().await;
    let clock = ManualClock::at(Utc::now());
    let app = App::build_with_clock(admin_settings_for(&url), Arc::new(clock.clone()))
        .await
        .unwrap();
    let f = Fixture::on(TestServer::from_app(app)).await;
    let open = || {
        f.server
            .client
            .get(f.server.url("/v1/revocations/stream"))
            .bearer_auth(&f.node_key)
            .send()
    };
    let mut streams = Vec::new();
    for _ in 0..keyplane_server::streams::MAX_STREAMS_PER_NODE {
        let stream = open().await.unwrap();
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), 429, "one stream past the bound");
    assert!(refused.headers().contains_key("retry-after"));
    // A stream that ends gives its place back.
    streams.pop();
    let again = eventually(Duration::from_secs(30), "a freed place", || async {
        let stream = open().await.ok()?;
        (stream.status() == 200).then_some(stream)
    })
    .await;
    drop(again);
    drop(streams);

    // Two seconds before the node key expires, a stream opened now ends
    // when the key does.
    let (_, node) = f
        .server
        .admin(Method::GET, &format!("/v1/nodes/{}", f.node_id), None)
        .await;
    let expires: chrono::DateTime<Utc> =
        serde_json::from_value(node["expires_at"].clone()).unwrap();
    clock.advance(expires - clock_now(&clock) - chrono::Duration::seconds(2));
    let last = eventually(
        Duration::from_secs(30),
        "a place for the last stream",
        || async {
            let stream = open().await.ok()?;
            (stream.status() == 200).then_some(stream)
        },
    )
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(20), async move {
        let mut last = last;
        while let Ok(Some(_)) = last.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its node key");
    f.server.stop().await.unwrap();
}

fn clock_now(clock: &ManualClock) -> chrono::DateTime<Utc> {
    use keyplane_server::clock::Clock;
    clock.now()
}
