//! Every management route against every management role, and against
//! credentials that must never work: no route is left unguarded.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{BOOTSTRAP, TestServer, call};

/// What each role may do, as the contract states it.
fn allowed(role: &str, area: &str) -> bool {
    // Every admin key may read and rotate itself.
    area == "own key"
        || match role {
            "admin" => true,
            "operator" => matches!(
                area,
                "instances:read"
                    | "instances:write"
                    | "keys:read"
                    | "keys:write"
                    | "nodes:read"
                    | "nodes:write"
                    | "roles:read"
                    | "enrollment:write"
                    | "webhooks:read"
                    | "usage:read"
            ),
            "auditor" => area.ends_with(":read"),
            // Rotating signing keys is for admins only (the first arm).
            "viewer" => matches!(area, "instances:read" | "keys:read" | "nodes:read"),
            _ => false,
        }
}

#[tokio::test]
async fn every_management_route_enforces_the_role_matrix() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let instance_key = key["secret"].as_str().unwrap().to_owned();
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-1"})))
        .await;
    let node_id = node["id"].as_str().unwrap().to_owned();
    let doomed = server.instance("jan-doomed", &["inference:chat"]).await;
    let (_, enrollment) = server
        .admin(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(json!({"name": "e", "scopes": ["inference:chat"]})),
        )
        .await;
    let enrollment_id = enrollment["id"].as_str().unwrap().to_owned();
    let (_, webhook) = server
        .admin(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/h", "events": ["key.revoked"]})),
        )
        .await;
    let webhook_id = webhook["id"].as_str().unwrap().to_owned();

    let mut tokens = Vec::new();
    for role in ["admin", "operator", "auditor", "viewer"] {
        let (status, body) = server
            .admin(
                Method::POST,
                "/v1/admin-keys",
                Some(json!({"name": role, "role": role})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        tokens.push((role, body["secret"].as_str().unwrap().to_owned()));
    }
    let (_, spare) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "spare", "role": "viewer"})),
        )
        .await;
    let spare_id = spare["id"].as_str().unwrap().to_owned();
    let (_, revoked) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "gone", "role": "admin"})),
        )
        .await;
    let revoked_secret = revoked["secret"].as_str().unwrap().to_owned();
    server
        .admin(
            Method::POST,
            &format!("/v1/admin-keys/{}/revoke", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;

    let routes: Vec<(Method, String, &str, &str, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/instances".into(),
            "/v1/instances",
            "instances:write",
            Some(json!({"name": "x"})),
        ),
        (
            Method::GET,
            "/v1/instances".into(),
            "/v1/instances",
            "instances:read",
            None,
        ),
        (
            Method::GET,
            format!("/v1/instances/{instance}"),
            "/v1/instances/{id}",
            "instances:read",
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/instances/{instance}"),
            "/v1/instances/{id}",
            "instances:write",
            Some(json!({"description": "d"})),
        ),
        (
            Method::DELETE,
            format!("/v1/instances/{doomed}"),
            "/v1/instances/{id}",
            "instances:write",
            None,
        ),
        (
            Method::POST,
            format!("/v1/instances/{instance}/keys"),
            "/v1/instances/{id}/keys",
            "keys:write",
            Some(json!({"name": "n", "scopes": ["inference:chat"]})),
        ),
        (
            // The second import of the same key is a 409: still not a 403.
            Method::POST,
            format!("/v1/instances/{instance}/keys/import"),
            "/v1/instances/{id}/keys/import",
            "keys:write",
            Some(json!({"keys": ["a-static-cortex-key-1"]})),
        ),
        (
            Method::GET,
            "/v1/keys".into(),
            "/v1/keys",
            "keys:read",
            None,
        ),
        (
            Method::GET,
            format!("/v1/keys/{key_id}"),
            "/v1/keys/{id}",
            "keys:read",
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{key_id}"),
            "/v1/keys/{id}",
            "keys:write",
            Some(json!({"name": "renamed"})),
        ),
        (
            Method::POST,
            format!("/v1/keys/{key_id}/rotate"),
            "/v1/keys/{id}/rotate",
            "keys:write",
            None,
        ),
        (
            Method::POST,
            format!("/v1/keys/{key_id}/revoke"),
            "/v1/keys/{id}/revoke",
            "keys:write",
            None,
        ),
        (
            Method::GET,
            "/v1/roles".into(),
            "/v1/roles",
            "roles:read",
            None,
        ),
        (
            Method::PUT,
            "/v1/roles/spare".into(),
            "/v1/roles/{name}",
            "roles:write",
            Some(json!({"scopes": ["models:read"]})),
        ),
        (
            Method::DELETE,
            "/v1/roles/spare".into(),
            "/v1/roles/{name}",
            "roles:write",
            None,
        ),
        (
            Method::POST,
            "/v1/nodes".into(),
            "/v1/nodes",
            "nodes:write",
            Some(json!({"name": "n"})),
        ),
        (
            Method::GET,
            "/v1/nodes".into(),
            "/v1/nodes",
            "nodes:read",
            None,
        ),
        (
            Method::GET,
            format!("/v1/nodes/{node_id}"),
            "/v1/nodes/{id}",
            "nodes:read",
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/nodes/{node_id}"),
            "/v1/nodes/{id}",
            "nodes:write",
            Some(json!({"forward_auth_proxy": "caddy"})),
        ),
        (
            Method::POST,
            format!("/v1/nodes/{node_id}/rotate"),
            "/v1/nodes/{id}/rotate",
            "nodes:write",
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/nodes/{node_id}"),
            "/v1/nodes/{id}",
            "nodes:write",
            None,
        ),
        (
            Method::POST,
            "/v1/admin-keys".into(),
            "/v1/admin-keys",
            "admin-keys:write",
            Some(json!({"name": "n", "role": "viewer"})),
        ),
        (
            Method::GET,
            "/v1/admin-keys".into(),
            "/v1/admin-keys",
            "admin-keys:read",
            None,
        ),
        (
            Method::POST,
            format!("/v1/admin-keys/{spare_id}/rotate"),
            "/v1/admin-keys/{id}/rotate",
            "admin-keys:write",
            None,
        ),
        (
            Method::POST,
            format!("/v1/admin-keys/{spare_id}/revoke"),
            "/v1/admin-keys/{id}/revoke",
            "admin-keys:write",
            None,
        ),
        (
            Method::GET,
            "/v1/admin-keys/self".into(),
            "/v1/admin-keys/self",
            "own key",
            None,
        ),
        (
            Method::POST,
            "/v1/admin-keys/self/rotate".into(),
            "/v1/admin-keys/self/rotate",
            "own key",
            None,
        ),
        (
            Method::POST,
            "/v1/signing-keys/rotate".into(),
            "/v1/signing-keys/rotate",
            "signing-keys:write",
            None,
        ),
        (
            Method::GET,
            "/v1/audit".into(),
            "/v1/audit",
            "audit:read",
            None,
        ),
        (
            Method::GET,
            "/v1/scopes".into(),
            "/v1/scopes",
            "roles:read",
            None,
        ),
        (
            Method::PUT,
            "/v1/scopes/matrix:check".into(),
            "/v1/scopes/{name}",
            "roles:write",
            Some(json!({"description": "d"})),
        ),
        (
            Method::DELETE,
            "/v1/scopes/matrix:none".into(),
            "/v1/scopes/{name}",
            "roles:write",
            None,
        ),
        (
            Method::GET,
            "/v1/usage".into(),
            "/v1/usage",
            "usage:read",
            None,
        ),
        (
            Method::GET,
            "/v1/audit/verify".into(),
            "/v1/audit/verify",
            "audit:read",
            None,
        ),
        (
            Method::GET,
            "/v1/audit/export".into(),
            "/v1/audit/export",
            "audit:read",
            None,
        ),
        (
            Method::GET,
            "/v1/audit/checkpoints".into(),
            "/v1/audit/checkpoints",
            "audit:read",
            None,
        ),
        (
            Method::POST,
            "/v1/audit/checkpoints".into(),
            "/v1/audit/checkpoints",
            "signing-keys:write",
            None,
        ),
        (
            Method::POST,
            "/v1/enrollment-tokens".into(),
            "/v1/enrollment-tokens",
            "enrollment:write",
            Some(json!({"name": "e", "scopes": ["inference:chat"]})),
        ),
        (
            Method::GET,
            "/v1/enrollment-tokens".into(),
            "/v1/enrollment-tokens",
            "keys:read",
            None,
        ),
        (
            Method::POST,
            format!("/v1/enrollment-tokens/{enrollment_id}/revoke"),
            "/v1/enrollment-tokens/{id}/revoke",
            "enrollment:write",
            None,
        ),
        (
            Method::POST,
            "/v1/webhooks".into(),
            "/v1/webhooks",
            "webhooks:write",
            Some(json!({"url": "http://127.0.0.1:9/h", "events": ["key.rotated"]})),
        ),
        (
            Method::GET,
            "/v1/webhooks".into(),
            "/v1/webhooks",
            "webhooks:read",
            None,
        ),
        (
            Method::GET,
            format!("/v1/webhooks/{webhook_id}/deliveries"),
            "/v1/webhooks/{id}/deliveries",
            "webhooks:read",
            None,
        ),
        (
            Method::POST,
            format!("/v1/webhooks/{webhook_id}/rotate-secret"),
            "/v1/webhooks/{id}/rotate-secret",
            "webhooks:write",
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/webhooks/{webhook_id}"),
            "/v1/webhooks/{id}",
            "webhooks:write",
            None,
        ),
        // Fleet-wide operations, on a selector that matches nothing here.
        (
            Method::POST,
            "/v1/keys/rotate".into(),
            "/v1/keys/rotate",
            "keys:write",
            Some(json!({"selector": "matrix=none"})),
        ),
        (
            Method::POST,
            "/v1/keys/revoke".into(),
            "/v1/keys/revoke",
            "keys:write",
            Some(json!({"selector": "matrix=none"})),
        ),
        (
            Method::POST,
            "/v1/instances/suspend".into(),
            "/v1/instances/suspend",
            "instances:write",
            Some(json!({"selector": "matrix=none"})),
        ),
        // Sessions are people's; keys see who they are, and admins look
        // after everyone's sessions (people's own are in people.rs).
        (
            Method::GET,
            "/v1/auth/session".into(),
            "/v1/auth/session",
            "own key",
            None,
        ),
        (
            Method::POST,
            "/v1/auth/logout".into(),
            "/v1/auth/logout",
            "own key",
            None,
        ),
        (
            Method::GET,
            "/v1/sessions".into(),
            "/v1/sessions",
            "sessions:admin",
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/sessions/{}", uuid::Uuid::new_v4()),
            "/v1/sessions/{id}",
            "sessions:admin",
            None,
        ),
        (
            Method::POST,
            "/v1/sessions/revoke-all".into(),
            "/v1/sessions/revoke-all",
            "sessions:admin",
            Some(json!({"subject": "nobody"})),
        ),
    ];

    // Node routes take node keys only, and instances' routes their own
    // credentials: no operator credential opens them.
    let node_routes = [
        (Method::POST, "/v1/introspect"),
        (Method::GET, "/v1/authz/check"),
        (Method::POST, "/v1/authz/check"),
        (Method::GET, "/v1/authz/check/{path}"),
        (Method::POST, "/v1/authz/check/{path}"),
        (Method::PUT, "/v1/authz/check/{path}"),
        (Method::PATCH, "/v1/authz/check/{path}"),
        (Method::DELETE, "/v1/authz/check/{path}"),
        (Method::GET, "/v1/revocations/stream"),
        (Method::POST, "/v1/heartbeat"),
        (Method::POST, "/v1/usage/reports"),
        (Method::POST, "/v1/usage/leases"),
        (Method::GET, "/v1/nodes/self"),
        (Method::POST, "/v1/nodes/self/rotate"),
        // Instances' own routes take their enrollment token or API key.
        (Method::POST, "/v1/enroll"),
        (Method::GET, "/v1/self"),
        (Method::POST, "/v1/self/rotate"),
    ];
    for (method, path) in &node_routes {
        for token in std::iter::once(BOOTSTRAP).chain(tokens.iter().map(|(_, t)| t.as_str())) {
            let (status, _) = call(server.as_(token, method.clone(), path), None).await;
            assert_eq!(
                status, 401,
                "{method} {path} opened to an operator credential"
            );
        }
    }

    // The table covers every operation the OpenAPI document lists under /v1.
    let spec = keyplane_server::routes::openapi();
    let documented: BTreeSet<(String, String)> = serde_json::to_value(&spec).unwrap()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.starts_with("/v1/"))
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    // Anyone may report a leaked key: no credential, and none needed (its
    // own tests are in leak_reports.rs). Signing in starts without one too
    // (people.rs).
    let public_routes = [
        (Method::POST, "/v1/leaks"),
        (Method::GET, "/v1/auth/oidc/login"),
        (Method::GET, "/v1/auth/oidc/callback"),
        (Method::POST, "/v1/auth/device"),
        (Method::GET, "/v1/auth/device/verify"),
        (Method::POST, "/v1/auth/device/verify"),
        (Method::POST, "/v1/auth/token"),
    ];
    let tested: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(method, _, template, _, _)| (method.to_string(), template.to_string()))
        .chain(
            node_routes
                .iter()
                .chain(&public_routes)
                .map(|(m, p)| (m.to_string(), p.to_string())),
        )
        .collect();
    assert_eq!(
        documented, tested,
        "a management route is missing from the matrix"
    );

    let never = [
        ("no credential", None),
        ("a malformed key", Some("kpa_not-a-real-key".to_owned())),
        ("a revoked admin key", Some(revoked_secret)),
        ("an instance key", Some(instance_key)),
        ("a near-miss bootstrap token", Some(format!("{BOOTSTRAP}x"))),
    ];
    for (method, path, _, area, body) in &routes {
        for (what, token) in &never {
            let request = server.client.request(method.clone(), server.url(path));
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            let response = match body {
                Some(body) => request.json(body),
                None => request,
            }
            .send()
            .await
            .unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {what}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        for (role, token) in &tokens {
            let (status, answer) =
                call(server.as_(token, method.clone(), path), body.clone()).await;
            if allowed(role, area) {
                assert!(
                    ![401, 403].contains(&status),
                    "{role} was refused {method} {path}: {answer}"
                );
            } else {
                assert_eq!(
                    status, 403,
                    "{role} was let through {method} {path}: {answer}"
                );
                assert_eq!(answer["code"], "forbidden");
            }
        }
    }
    server.stop().await.unwrap();
}
