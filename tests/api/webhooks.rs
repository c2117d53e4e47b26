//! Webhook endpoints as operators manage them: where deliveries may go,
//! who may see their URLs, and lists that page.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, admin_settings_for, call, eventually, fresh_database};

async fn register(server: &TestServer, url: &str) -> (u16, Value) {
    server
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["key.revoked"]})),
        )
        .await
}

#[tokio::test]
async fn deliveries_never_go_to_internal_addresses_unless_allowed() {
    let url = fresh_database().await;
    let server = TestServer::start_with(admin_settings_for(&url)).await;
    for internal in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://[fe80::1]/hook",
        "http://192.168.1.20:8080/hook",
    ] {
        let (status, refused) = register(&server, internal).await;
        assert_eq!(status, 422, "{internal}: {refused}");
        assert_eq!(refused["field"], "url");
        assert!(
            refused["detail"]
                .as_str()
                .unwrap()
                .contains("internal address")
        );
    }
    // Loopback is allowed in dev, where receivers run beside keyplane.
    assert_eq!(register(&server, "http://127.0.0.1:9/hook").await.0, 201);
    server.stop().await.unwrap();

    // A network an operator allows may be reached...
    let allowing = keyplane_server::Settings {
        webhook_allow_networks: vec!["10.0.0.0/8".parse().unwrap()],
        scheduler_interval: Duration::from_millis(100),
        ..admin_settings_for(&url)
    };
    let server = TestServer::start_with(allowing).await;
    let (status, hook) = register(&server, "http://10.1.2.3:9/hook").await;
    assert_eq!(status, 201, "{hook}");
    server.stop().await.unwrap();

    // ...and once it no longer is, no delivery goes there: checked again
    // when each delivery is made, not only when the endpoint was registered.
    let server = TestServer::start_with(keyplane_server::Settings {
        scheduler_interval: Duration::from_millis(100),
        ..admin_settings_for(&url)
    })
    .await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    let deliveries = format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap());
    let attempt = eventually(Duration::from_secs(20), "a delivery attempt", || async {
        let (_, page) = server.admin(Method::GET, &deliveries, None).await;
        page["items"]
            .as_array()
            .and_then(|items| items.first().cloned())
            // An attempt is counted when it starts, its error written when
            // it ends.
            .filter(|d| d["attempts"].as_i64() >= Some(1) && d["last_error"].is_string())
    })
    .await;
    assert_eq!(attempt["status"], "pending", "{attempt}");
    assert!(
        attempt["last_error"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{attempt}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn only_admins_see_a_webhook_url_whole() {
    let server = TestServer::start_admin().await;
    let secret_url = "http://127.0.0.1:9/services/T000/B000/receiver-secret";
    let (status, _) = register(&server, secret_url).await;
    assert_eq!(status, 201);
    let (_, operator) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "ops", "role": "operator"})),
        )
        .await;
    let (status, seen) = call(
        server.as_(
            operator["secret"].as_str().unwrap(),
            Method::GET,
            "/v1/webhooks",
        ),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen["items"][0]["url"], "http://127.0.0.1:9/…");
    assert!(!seen.to_string().contains("receiver-secret"));
    let (_, whole) = server.admin(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(whole["items"][0]["url"], secret_url);
    server.stop().await.unwrap();
}

/// Every item of a list, page by page, `limit` at a time.
async fn every_page(server: &TestServer, path: &str, limit: u32) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut page_path = format!("{path}{separator}limit={limit}");
        if let Some(cursor) = &cursor {
            page_path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = server.admin(Method::GET, &page_path, None).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (items, pages),
        }
    }
}

#[tokio::test]
async fn roles_webhooks_and_deliveries_page_through_every_item() {
    let url = fresh_database().await;
    let server = TestServer::start_with(keyplane_server::Settings {
        scheduler_interval: Duration::from_millis(100),
        ..admin_settings_for(&url)
    })
    .await;
    // Roles, by name: the three seeded and two more.
    for name in ["auditors-extra", "zeta"] {
        server
            .admin(
                Method::PUT,
                &format!("/v1/roles/{name}"),
                Some(json!({"scopes": ["models:read"]})),
            )
            .await;
    }
    let (roles, pages) = every_page(&server, "/v1/roles", 2).await;
    let names: Vec<&str> = roles.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        [
            "auditors-extra",
            "inference-client",
            "model-manager",
            "node-admin",
            "zeta"
        ]
    );
    // Endpoints, oldest first.
    let mut ids = Vec::new();
    for port in 1..=3 {
        let (_, hook) = register(&server, &format!("http://127.0.0.1:{port}/hook")).await;
        ids.push(hook["id"].clone());
    }
    let (hooks, pages) = every_page(&server, "/v1/webhooks", 2).await;
    assert_eq!(
        (
            hooks.iter().map(|h| h["id"].clone()).collect::<Vec<_>>(),
            pages
        ),
        (ids.clone(), 2)
    );
    // Deliveries of one endpoint, newest first.
    let instance = server.instance("jan", &["inference:chat"]).await;
    for n in 0..5 {
        let key = server
            .key(
                &instance,
                json!({"name": format!("k{n}"), "scopes": ["inference:chat"]}),
            )
            .await;
        server
            .admin(
                Method::POST,
                &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
                None,
            )
            .await;
    }
    let path = format!("/v1/webhooks/{}/deliveries", ids[0].as_str().unwrap());
    let (deliveries, pages) = every_page(&server, &path, 2).await;
    assert_eq!((deliveries.len(), pages), (5, 3));
    let created: Vec<&str> = deliveries
        .iter()
        .map(|d| d["created_at"].as_str().unwrap())
        .collect();
    let mut newest_first = created.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, newest_first);
    // A cursor of one list does not read in another.
    let (_, first) = server
        .admin(Method::GET, "/v1/webhooks?limit=1", None)
        .await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (status, refused) = server
        .admin(Method::GET, &format!("{path}?cursor={cursor}"), None)
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    server.stop().await.unwrap();
}
