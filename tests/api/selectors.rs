//! Fleet-wide operations: label selectors filter instances and keys, bulk
//! rotation, revocation and suspension change every matching key once (each
//! audited, plus one entry for the operation), and `dry_run=true` answers
//! the plan of any of them, or of a role or ceiling change, and changes nothing.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestServer;

/// Instances with labels, and one key each: answers (name → instance id, key).
async fn fleet(server: &TestServer) -> Vec<(&'static str, String, Value)> {
    let mut made = Vec::new();
    for (name, labels) in [
        ("a", json!({"env": "prod", "team": "ml", "tier": "gpu"})),
        ("b", json!({"env": "prod", "team": "web", "tier": "cpu"})),
        ("c", json!({"env": "dev", "tier": "gpu"})),
        ("d", json!({"owner": "nobody"})),
    ] {
        let (status, instance) = server
            .admin(
                Method::POST,
                "/v1/instances",
                Some(json!({"name": name, "labels": labels,
                            "allowed_scopes": ["inference:chat", "models:read"]})),
            )
            .await;
        assert_eq!(status, 201, "{instance}");
        let id = instance["id"].as_str().unwrap().to_owned();
        let key = server
            .key(&id, json!({"name": name, "scopes": ["inference:chat"]}))
            .await;
        made.push((name, id, key));
    }
    made
}

fn names(page: &Value) -> BTreeSet<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn list(server: &TestServer, path: &str, selector: &str) -> (u16, Value) {
    let url =
        reqwest::Url::parse_with_params(&server.url(path), &[("selector", selector)]).unwrap();
    crate::support::call(
        server
            .client
            .get(url)
            .bearer_auth(crate::support::BOOTSTRAP),
        None,
    )
    .await
}

#[tokio::test]
async fn selectors_filter_instances_and_keys_by_labels() {
    let server = TestServer::start_admin().await;
    fleet(&server).await;
    for (selector, expected) in [
        ("env=prod", &["a", "b"][..]),
        ("env=prod,team!=ml", &["b"]),
        ("tier in (gpu, cpu)", &["a", "b", "c"]),
        ("tier notin (gpu)", &["b", "d"]),
        ("team", &["a", "b"]),
        ("!tier", &["d"]),
        ("env==dev,tier=gpu", &["c"]),
        ("env=staging", &[]),
    ] {
        let (status, page) = list(&server, "/v1/instances", selector).await;
        assert_eq!(status, 200, "{selector}: {page}");
        assert_eq!(names(&page), set(expected), "{selector}");
        let (status, keys) = list(&server, "/v1/keys", selector).await;
        assert_eq!(status, 200, "{selector}: {keys}");
        assert_eq!(names(&keys), set(expected), "keys of {selector}");
    }
    for bad in ["tier in gpu", "env=prod,,x", "en v=prod", ""] {
        let (status, problem) = list(&server, "/v1/instances", bad).await;
        assert_eq!(status, 422, "{bad:?}: {problem}");
        assert_eq!(problem["field"], "selector");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bulk_operations_plan_first_then_change_every_matching_key_once() {
    let server = TestServer::start_admin().await;
    let made = fleet(&server).await;
    let key_of = |name: &str| {
        made.iter().find(|(n, _, _)| *n == name).unwrap().2["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let status_of = |id: String| {
        let server = &server;
        async move {
            let (_, key) = server
                .admin(Method::GET, &format!("/v1/keys/{id}"), None)
                .await;
            key["status"].as_str().unwrap().to_owned()
        }
    };

    // The plan names the keys that would stop, and changes nothing.
    let (status, plan) = server
        .admin(
            Method::POST,
            "/v1/keys/revoke?dry_run=true",
            Some(json!({"selector": "env=prod", "reason": "incident 42"})),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["dry_run"], true);
    let planned: BTreeSet<String> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["loses"], json!(["inference:chat"]));
            c["key_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(planned, [key_of("a"), key_of("b")].into_iter().collect());
    assert!(
        plan["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("keys.bulk_revoke"))
    );
    assert_eq!(
        status_of(key_of("a")).await,
        "active",
        "a plan changes nothing"
    );

    // Applied: both stop, each audited, and the operation once.
    let (status, revoked) = server
        .admin(
            Method::POST,
            "/v1/keys/revoke",
            Some(json!({"selector": "env=prod", "reason": "incident 42"})),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked"].as_array().unwrap().len(), 2);
    assert_eq!(status_of(key_of("a")).await, "revoked");
    assert_eq!(status_of(key_of("b")).await, "revoked");
    assert_eq!(status_of(key_of("c")).await, "active");
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=key.revoke", None)
        .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 2);
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=keys.bulk_revoke", None)
        .await;
    let entry = &audit["items"][0];
    assert_eq!(entry["target_id"], "env=prod");
    assert_eq!(entry["details"]["keys"], 2);
    // Again: nothing is left to revoke.
    let (_, again) = server
        .admin(
            Method::POST,
            "/v1/keys/revoke",
            Some(json!({"selector": "env=prod"})),
        )
        .await;
    assert_eq!(again["revoked"], json!([]));

    // Rotation by selector answers each successor's secret once.
    let (status, rotated) = server
        .admin(
            Method::POST,
            "/v1/keys/rotate",
            Some(json!({"selector": "tier=gpu", "grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, 201, "{rotated}");
    let rotated = rotated["rotated"].as_array().unwrap();
    assert_eq!(rotated.len(), 1, "a's key is revoked; c's rotates");
    assert!(rotated[0]["secret"].as_str().unwrap().starts_with("kpi_"));
    assert_eq!(rotated[0]["rotated_from"], key_of("c").as_str());
    let old = status_of(key_of("c")).await;
    assert!(
        !["active", "rotating"].contains(&old.as_str()),
        "no grace: it stops ({old})"
    );

    // Suspension by selector stops the instances' keys.
    let (status, suspended) = server
        .admin(
            Method::POST,
            "/v1/instances/suspend",
            Some(json!({"selector": "owner"})),
        )
        .await;
    assert_eq!(status, 200, "{suspended}");
    assert_eq!(suspended["suspended"].as_array().unwrap().len(), 1);
    assert_eq!(suspended["keys_stopped"], 1);
    let d = &made.iter().find(|(n, _, _)| *n == "d").unwrap().1;
    let (_, instance) = server
        .admin(Method::GET, &format!("/v1/instances/{d}"), None)
        .await;
    assert_eq!(instance["status"], "suspended");
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?action=instance.suspend", None)
        .await;
    assert_eq!(audit["items"][0]["target_id"], d.as_str());

    // A selector is required: never everything by omission.
    for body in [
        json!({}),
        json!({"selector": ""}),
        json!({"selector": "tier in gpu"}),
        json!({"selector": "!nonexistent"}),
        json!({"selector": "env!=prod,tier notin (gpu)"}),
    ] {
        let (status, problem) = server
            .admin(Method::POST, "/v1/keys/revoke", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body}: {problem}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_role_or_ceiling_change_can_be_planned_over_http() {
    let server = TestServer::start_admin().await;
    let made = fleet(&server).await;
    let (_, c, key) = made.iter().find(|(n, _, _)| *n == "c").unwrap();
    let (status, plan) = server
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{c}?dry_run=true"),
            Some(json!({"allowed_scopes": ["models:read"]})),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["changes"],
        json!([{"key_id": key["id"], "instance_id": c, "gains": [], "loses": ["inference:chat"]}])
    );
    let (_, instance) = server
        .admin(Method::GET, &format!("/v1/instances/{c}"), None)
        .await;
    assert_eq!(
        instance["allowed_scopes"],
        json!(["inference:chat", "models:read"]),
        "unchanged"
    );
    let (status, plan) = server
        .admin(
            Method::PUT,
            "/v1/roles/new-role?dry_run=true",
            Some(json!({"scopes": ["models:read"]})),
        )
        .await;
    assert_eq!((status, plan["dry_run"].clone()), (200, json!(true)));
    let (_, roles) = server.admin(Method::GET, "/v1/roles", None).await;
    assert!(!roles.to_string().contains("new-role"), "not created");
    server.stop().await.unwrap();
}
