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
    let (_, admin) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "ops", "role": "viewer"})),
        )
        .await;
    let admin_key = admin["secret"].as_str().unwrap().to_owned();

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
    // Now the bootstrap token is not checked from this address: guessing it
    // stays slow.
    let refused = server
        .as_(BOOTSTRAP, Method::GET, "/v1/instances")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(retry_after(&refused) >= 1);
    // A live admin key at the same address (an operator behind the same
    // NAT) is checked first and keeps working.
    assert_eq!(
        call(server.as_(&admin_key, Method::GET, "/v1/instances"), None)
            .await
            .0,
        200
    );

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

#[tokio::test]
async fn a_client_retrying_a_stale_key_locks_out_only_itself() {
    let server = server_with(LimitSettings {
        auth_failures_per_minute: 5,
        credential_failures_per_minute: 2,
        ..LimitSettings::default()
    })
    .await;
    let (_, stale) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "old-script", "role": "viewer"})),
        )
        .await;
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/admin-keys/{}/revoke", stale["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let stale = stale["secret"].as_str().unwrap();
    // A forgotten script retries its revoked key forty times...
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(
            call(server.as_(stale, Method::GET, "/v1/instances"), None)
                .await
                .0,
        );
    }
    // (two failures tolerated, the third spends past the budget)
    assert_eq!(&statuses[..3], &[401, 401, 401]);
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // ...and has spent only its own budget: the bootstrap token, which
    // shares its address and is refused once the address keeps failing,
    // still works.
    assert_eq!(
        call(server.as_(BOOTSTRAP, Method::GET, "/v1/instances"), None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn failed_node_authentications_are_limited_and_a_live_node_is_not() {
    let server = server_with(LimitSettings {
        auth_failures_per_minute: 3,
        ..LimitSettings::default()
    })
    .await;
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-1"})))
        .await;
    let node_key = node["secret"].as_str().unwrap();
    let introspect = |node_key: String| {
        let request = server
            .client
            .post(server.url("/v1/introspect"))
            .bearer_auth(node_key)
            .form(&[("token", "kpi_whatever")]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let made_up = keyplane_domain::KeySecret::generate(keyplane_domain::KeyKind::Node).unwrap();
        statuses.push(introspect(made_up.expose().to_owned()).await);
    }
    // Three failures tolerated, the fourth spends past the budget.
    assert_eq!(&statuses[..4], &[401, 401, 401, 401]);
    assert!(statuses[4..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        introspect(node_key.to_owned()).await,
        200,
        "the live node keeps working"
    );
}

#[tokio::test]
async fn a_flood_of_made_up_keys_is_budgeted_and_good_keys_stay_answered() {
    let server = server_with(LimitSettings {
        misses_per_node_per_second: 1_000_000,
        misses_per_address_per_second: 5,
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
    let good = key["secret"].as_str().unwrap().to_owned();
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "gate-1"})))
        .await;
    let node_key = node["secret"].as_str().unwrap().to_owned();
    let introspect = |token: String, client_ip: &'static str| {
        let request = server
            .client
            .post(server.url("/v1/introspect"))
            .bearer_auth(&node_key)
            .form(&[("token", token.as_str()), ("client_ip", client_ip)]);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.ok())
        }
    };
    // The good key is cached by a first answer.
    let (status, answer) = introspect(good.clone(), "10.0.0.1").await;
    assert_eq!(
        (status, answer.unwrap()["active"].clone()),
        (200, json!(true))
    );
    // One client floods made-up, well-formed keys through the node: past
    // its budget of lookups, each is refused without one (a burst of
    // twenty cannot all fall in different seconds' budgets of five).
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let made_up =
            keyplane_domain::KeySecret::generate(keyplane_domain::KeyKind::Instance).unwrap();
        statuses.push(
            introspect(made_up.expose().to_owned(), "192.0.2.66")
                .await
                .0,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    // The good key is still answered from the cache, for that client too,
    // and another client's new key is still looked up.
    let (status, answer) = introspect(good.clone(), "192.0.2.66").await;
    assert_eq!(
        (status, answer.unwrap()["active"].clone()),
        (200, json!(true))
    );
    let fresh = server
        .key(
            &instance,
            json!({"name": "k2", "scopes": ["inference:chat"]}),
        )
        .await;
    let (status, answer) =
        introspect(fresh["secret"].as_str().unwrap().to_owned(), "10.0.0.2").await;
    assert_eq!(
        (status, answer.unwrap()["active"].clone()),
        (200, json!(true))
    );
}
