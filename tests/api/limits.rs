//! Usage limits, centrally: set on keys and instances, checked, audited,
//! carried in introspection answers and to nodes at once; idle keys listed.

use std::time::Duration;

use keyplane_client::{Config, Introspector, StreamState};
use keyplane_domain::{Limits, Mode, Models};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::{TestServer, admin_settings_for, eventually, fresh_database};

const DEADLINE: Duration = Duration::from_secs(10);

async fn node(server: &TestServer, name: &str) -> String {
    let (status, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({ "name": name })))
        .await;
    assert_eq!(status, 201, "{node}");
    node["secret"].as_str().unwrap().to_owned()
}

async fn introspect(server: &TestServer, node_key: &str, token: &str) -> Value {
    let response = server
        .client
        .post(server.url("/v1/introspect"))
        .bearer_auth(node_key)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn create_instance(server: &TestServer, body: Value) -> Value {
    let (status, instance) = server
        .admin(Method::POST, "/v1/instances", Some(body))
        .await;
    assert_eq!(status, 201, "{instance}");
    instance
}

#[tokio::test]
async fn the_tighter_of_key_and_instance_reaches_the_node() {
    let server = TestServer::start_admin().await;
    let node_key = node(&server, "gate-1").await;
    let instance = create_instance(
        &server,
        json!({
            "name": "jan-1",
            "allowed_scopes": ["inference:chat"],
            "limits": {"rpm": 600, "tpm": 100000, "monthly_tokens": 5000000},
            "models": ["llama3*", "qwen2-7b"],
        }),
    )
    .await;
    assert_eq!(instance["limits"]["rpm"], 600);
    assert_eq!(instance["limits"]["daily_tokens"], Value::Null);
    assert_eq!(instance["models"], json!(["llama3*", "qwen2-7b"]));
    let instance_id = instance["id"].as_str().unwrap();

    let key = server
        .key(
            instance_id,
            json!({
                "name": "k", "scopes": ["inference:chat"],
                "limits": {"rpm": 60, "tpm": 500000, "daily_tokens": 20000},
                "models": ["llama3.1*", "phi3"],
            }),
        )
        .await;
    assert_eq!(
        key["limits"],
        json!({"rpm": 60, "tpm": 500000, "daily_tokens": 20000, "monthly_tokens": null})
    );
    assert_eq!(key["models"], json!(["llama3.1*", "phi3"]));

    let answer = introspect(&server, &node_key, key["secret"].as_str().unwrap()).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(
        answer["limits"],
        json!({"rpm": 60, "tpm": 100000, "daily_tokens": 20000, "monthly_tokens": 5000000})
    );
    // What both allow: phi3 is not the instance's.
    assert_eq!(answer["models"], json!(["llama3.1*"]));

    // A key of an unlimited instance, itself unlimited: nothing to carry.
    let free = create_instance(
        &server,
        json!({"name": "jan-2", "allowed_scopes": ["inference:chat"]}),
    )
    .await;
    let free_key = server
        .key(
            free["id"].as_str().unwrap(),
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let answer = introspect(&server, &node_key, free_key["secret"].as_str().unwrap()).await;
    assert_eq!(answer["active"], true);
    assert!(
        answer.get("limits").is_none() && answer.get("models").is_none(),
        "{answer}"
    );

    // Rotation keeps them.
    let (status, successor) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", key["id"].as_str().unwrap()),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, 201, "{successor}");
    assert_eq!(successor["limits"], key["limits"]);
    assert_eq!(successor["models"], key["models"]);
}

#[tokio::test]
async fn limits_out_of_bounds_are_refused_and_name_the_field() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let secret = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys_path = format!("/v1/instances/{instance}/keys");
    let issue = |body: Value| server.admin(Method::POST, &keys_path, Some(body));
    for (limits, field) in [
        (json!({"rpm": -1}), "limits.rpm"),
        (json!({"rpm": 0}), "limits.rpm"),
        (json!({"tpm": 10_000_000_000_000_i64}), "limits.tpm"),
        (json!({"daily_tokens": -5}), "limits.daily_tokens"),
        (json!({"monthly_tokens": i64::MAX}), "limits.monthly_tokens"),
    ] {
        let (status, body) =
            issue(json!({"name": "k", "scopes": ["inference:chat"], "limits": limits})).await;
        assert_eq!(status, 422, "{limits}: {body}");
        assert_eq!(body["field"], field, "{body}");
    }
    // Not a number at all, or a limit keyplane does not know: refused too.
    for limits in [
        json!({"rpm": "many"}),
        json!({"rph": 5}),
        json!({"rpm": 1.5}),
    ] {
        let (status, body) =
            issue(json!({"name": "k", "scopes": ["inference:chat"], "limits": limits})).await;
        assert!(status == 400 || status == 422, "{limits}: {status} {body}");
    }
    for (models, field) in [
        (json!(["llama3*", "ll*ama"]), "models[1]"),
        (json!([""]), "models[0]"),
        (json!(["has space"]), "models[0]"),
        (json!(["llama3", secret]), "models[1]"),
        (
            json!((0..65).map(|i| format!("m{i}")).collect::<Vec<_>>()),
            "models",
        ),
    ] {
        let (status, body) =
            issue(json!({"name": "k", "scopes": ["inference:chat"], "models": models})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], field, "{body}");
        assert!(!body.to_string().contains(&secret), "a key echoed: {body}");
    }
    // The same on instances, created and changed.
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({"name": "jan-2", "limits": {"rpm": -60}})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("limits.rpm")),
        "{body}"
    );
    let (status, body) = server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{instance}"),
            Some(json!({"models": ["a**"]})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("models[0]")),
        "{body}"
    );
}

#[tokio::test]
async fn a_change_is_audited_and_reaches_nodes_at_once() {
    let server = TestServer::start_admin().await;
    let node_key = node(&server, "gate-1").await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "limits": {"rpm": 60}}),
        )
        .await;
    let secret = key["secret"].as_str().unwrap();
    let key_path = format!("/v1/keys/{}", key["id"].as_str().unwrap());

    // A node caching answers for an hour: only the stream can tell it.
    let mut config = Config::new(
        format!("http://{}", server.addr),
        SecretString::from(node_key.clone()),
        Mode::Prod,
    );
    config.cache_ttl_cap = Duration::from_secs(3600);
    let client = Introspector::start(config).unwrap();
    eventually(DEADLINE, "the revocation stream to connect", || async {
        (client.metrics().stream == StreamState::Up).then_some(())
    })
    .await;
    let identity = client.check(secret, None, None).await.unwrap();
    assert_eq!(identity.limits.rpm, Some(60));
    assert!(identity.allows_model("anything"));

    let (status, changed) = server
        .admin(
            Method::PATCH,
            &key_path,
            Some(json!({"limits": {"rpm": 10, "tpm": 1000}, "models": ["llama3*"]})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["limits"]["tpm"], 1000);
    let identity = eventually(DEADLINE, "the node to see the new limits", || async {
        let identity = client.check(secret, None, None).await.ok()?;
        (identity.limits.rpm == Some(10)).then_some(identity)
    })
    .await;
    assert_eq!(
        identity.limits,
        Limits::new(Some(10), Some(1000), None, None).unwrap()
    );
    assert_eq!(identity.models, Some(Models::parse(&["llama3*"]).unwrap()));
    assert!(identity.allows_model("llama3.2-1b") && !identity.allows_model("mistral"));

    // The instance's change reaches it too; null models is every model again.
    let (status, _) = server
        .admin(Method::PATCH, &key_path, Some(json!({"models": null})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{instance}"),
            Some(json!({"limits": {"rpm": 5}})),
        )
        .await;
    assert_eq!(status, 200);
    eventually(DEADLINE, "the node to see the instance's limit", || async {
        let identity = client.check(secret, None, None).await.ok()?;
        (identity.limits.rpm == Some(5) && identity.models.is_none()).then_some(())
    })
    .await;

    // Each change is in the audit log, before and after.
    let (status, audit) = server
        .admin(Method::GET, "/v1/audit?action=key.update", None)
        .await;
    assert_eq!(status, 200, "{audit}");
    let entry = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["details"]["after"]["limits"]["tpm"] == 1000)
        .unwrap_or_else(|| panic!("no audit entry for the change: {audit}"));
    assert_eq!(entry["details"]["before"]["limits"], json!({"rpm": 60}));
    assert_eq!(entry["details"]["after"]["models"], json!(["llama3*"]));
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=instance.update", None)
        .await;
    assert!(
        audit.to_string().contains(r#""limits":{"rpm":5}"#),
        "{audit}"
    );
    // The stream said why: the key still works.
    assert!(client.check(secret, None, None).await.is_ok());
}

#[tokio::test]
async fn idle_keys_are_listed() {
    let url = fresh_database().await;
    let (server, clock) = TestServer::start_with_clock(admin_settings_for(&url)).await;
    let node_key = node(&server, "gate-1").await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let issue = |name: &'static str| {
        server.key(
            &instance,
            json!({"name": name, "scopes": ["inference:chat"]}),
        )
    };
    let (unused, used, revoked) = (
        issue("unused").await,
        issue("used").await,
        issue("revoked").await,
    );
    let id = |key: &Value| key["id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", id(&revoked)),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);

    clock.advance(chrono::Duration::days(20));
    assert_eq!(
        introspect(&server, &node_key, used["secret"].as_str().unwrap()).await["active"],
        true
    );
    eventually(DEADLINE, "the use to be noted", || async {
        let (_, key) = server
            .admin(Method::GET, &format!("/v1/keys/{}", id(&used)), None)
            .await;
        (!key["last_used_at"].is_null()).then_some(())
    })
    .await;
    clock.advance(chrono::Duration::days(11));

    let server = &server;
    let idle = |query: &'static str| async move {
        let (status, page) = server
            .admin(Method::GET, &format!("/v1/keys?{query}"), None)
            .await;
        assert_eq!(status, 200, "{page}");
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(id)
            .collect::<Vec<_>>()
    };
    // Unused for 31 days: idle. Used 11 days ago: not. Revoked: not a key to tidy.
    assert_eq!(idle("idle_for=30d").await, vec![id(&unused)]);
    let mut both = vec![id(&unused), id(&used)];
    both.sort();
    let mut listed = idle("idle_for=10d").await;
    listed.sort();
    assert_eq!(listed, both);
    assert_eq!(idle("idle_for=40d").await, Vec::<String>::new());
    for bad in ["idle_for=soon", "idle_for=-1d", "idle_for=99999999999d"] {
        let (status, body) = server
            .admin(Method::GET, &format!("/v1/keys?{bad}"), None)
            .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("idle_for")),
            "{bad}: {body}"
        );
    }
}
