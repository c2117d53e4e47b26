//! Rate limits: answered 429 with Retry-After, and none of them usable to
//! lock out a healthy node.

use keyplane_server::limits::LimitSettings;
use reqwest::Method;
use serde_json::json;

use crate::support::{BOOTSTRAP, TestServer, admin_settings_for, call, fresh_database};

async fn server_with(limits: LimitSettings) -> TestServer {
    let url = fresh_database().await;
    TestServer::start_with(keyplane_server::Settings {
        limits,
        ..admin_settings_for(&url)
    })
    .await
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn each_admin_key_has_its_own_budget() {
    let server = server_with(LimitSettings {
        operator_per_minute: 5,
        ..LimitSettings::default()
    })
    .await;
    let (status, admin) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "ops", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 201);
    for _ in 0..4 {
        assert_eq!(
            server.admin(Method::GET, "/v1/instances", None).await.0,
            200
        );
    }
    let refused = server
        .as_(BOOTSTRAP, Method::GET, "/v1/instances")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(retry_after(&refused) >= 1);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    // Another operator is not held back by the first one's budget.
    let other = admin["secret"].as_str().unwrap();
    assert_eq!(
        call(server.as_(other, Method::GET, "/v1/instances"), None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn guessing_is_cut_off_per_address_but_a_node_there_keeps_working() {
    let server = server_with(LimitSettings {
        auth_failures_per_minute: 3,
        ..LimitSettings::default()
    })
    .await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-1"})))
        .await;
    let node_key = node["secret"].as_str().unwrap();

    // Three failures a minute are tolerated; the fourth spends past the budget.
    for attempt in 0..4 {
        let guess = format!("kpa_guess{attempt:033}");
        assert_eq!(
            call(server.as_(&guess, Method::GET, "/v1/instances"), None)
                .await
                .0,
            401
        );
    }
    // Now even the right credential is not checked from this address.
    let refused = server
        .as_(BOOTSTRAP, Method::GET, "/v1/instances")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(retry_after(&refused) >= 1);

    // The node at the same address is not locked out.
    let answer: serde_json::Value = server
        .client
        .post(server.url("/v1/introspect"))
        .bearer_auth(node_key)
        .form(&[("token", key["secret"].as_str().unwrap())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["active"], true);
}

#[tokio::test]
async fn each_node_has_its_own_budget() {
    let server = server_with(LimitSettings {
        node_per_second: 1,
        ..LimitSettings::default()
    })
    .await;
    let mut nodes = Vec::new();
    for name in ["busy", "quiet"] {
        let (_, node) = server
            .admin(Method::POST, "/v1/nodes", Some(json!({"name": name})))
            .await;
        nodes.push(node["secret"].as_str().unwrap().to_owned());
    }
    let introspect = |node_key: String| {
        let request = server
            .client
            .post(server.url("/v1/introspect"))
            .bearer_auth(node_key)
            .form(&[("token", "kpi_whatever")]);
        async move { request.send().await.unwrap() }
    };
    // A budget of one a second: the busy node's first request passes and a
    // burst right behind it is refused (ten in a row cannot all be a second
    // apart, however slow the machine)...
    assert_eq!(introspect(nodes[0].clone()).await.status(), 200);
    let mut refused = None;
    for _ in 0..10 {
        let response = introspect(nodes[0].clone()).await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let refused = refused.expect("a burst over the node's budget was never refused");
    assert!(retry_after(&refused) >= 1);
    // ...and the quiet node is not affected.
    assert_eq!(introspect(nodes[1].clone()).await.status(), 200);
}
