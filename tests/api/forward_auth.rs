//! Forward auth behind each proxy it supports, called the way each proxy
//! really calls it (header for header, as their documentation and source
//! describe and as nginx 1.22 and Caddy 2.6 were seen to send them), with a
//! client forging every header it can.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, admin_settings_for, eventually, fresh_database};

/// An instance restricted to 10.0.0.0/8 with a `models:read` key, a public
/// route, and one node.
struct Setup {
    server: TestServer,
    node_id: String,
    node_key: String,
    instance: String,
    models_key: String,
}

impl Setup {
    async fn start(default_proxy: Option<&str>) -> Setup {
        let url = fresh_database().await;
        let mut settings = admin_settings_for(&url);
        settings.routes = keyplane_domain::RouteMap::parse("GET /health=public")
            .unwrap()
            .then(keyplane_domain::RouteMap::defaults());
        if let Some(proxy) = default_proxy {
            settings.forward_auth_proxy = proxy.parse().unwrap();
        }
        let server = TestServer::start_with(settings).await;
        let (status, instance) = server
            .admin(
                Method::POST,
                "/v1/instances",
                Some(json!({
                    "name": "jan-office",
                    "allowed_scopes": ["inference:chat", "models:read"],
                    "allowed_cidrs": ["10.0.0.0/8"],
                })),
            )
            .await;
        assert_eq!(status, 201, "{instance}");
        let instance = instance["id"].as_str().unwrap().to_owned();
        let key = server
            .key(
                &instance,
                json!({"name": "models", "scopes": ["models:read"]}),
            )
            .await;
        let (_, node) = server
            .admin(Method::POST, "/v1/nodes", Some(json!({"name": "edge-1"})))
            .await;
        Setup {
            node_id: node["id"].as_str().unwrap().to_owned(),
            node_key: node["secret"].as_str().unwrap().to_owned(),
            models_key: key["secret"].as_str().unwrap().to_owned(),
            instance,
            server,
        }
    }

    async fn set_proxy(&self, proxy: Value) -> Value {
        let (status, node) = self
            .server
            .admin(
                Method::PATCH,
                &format!("/v1/nodes/{}", self.node_id),
                Some(json!({ "forward_auth_proxy": proxy })),
            )
            .await;
        assert_eq!(status, 200, "{node}");
        node
    }

    /// One forward-auth call: `method` on `path` of keyplane, with `headers`.
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .server
            .client
            .request(method.parse().unwrap(), self.server.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }
}

/// nginx `auth_request` with deploy/nginx/keyplane-auth.conf: a GET
/// subrequest carrying every client header, with the example's
/// `proxy_set_header` values in place of the client's own.
fn nginx_call<'a>(
    node_key: &'a str,
    method: &'a str,
    uri: &'a str,
    peer: &'a str,
    xff: &'a str,
    client: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let set = [
        "x-keyplane-node-key",
        "x-original-method",
        "x-original-uri",
        "x-real-ip",
        "x-forwarded-for",
    ];
    let mut headers: Vec<(&str, &str)> = client
        .iter()
        .filter(|(name, _)| !set.contains(&name.to_ascii_lowercase().as_str()))
        .copied()
        .collect();
    headers.extend([
        ("x-keyplane-node-key", node_key),
        ("x-original-method", method),
        ("x-original-uri", uri),
        ("x-real-ip", peer),
        ("x-forwarded-for", xff),
    ]);
    headers
}

/// Traefik ForwardAuth (trustForwardHeader: false, default entrypoint): a
/// GET to the address with every client header copied, the client's
/// X-Forwarded-* and X-Real-Ip replaced, and the node key set by a headers
/// middleware before it.
fn traefik_call<'a>(
    node_key: &'a str,
    method: &'a str,
    uri: &'a str,
    peer: &'a str,
    client: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut headers: Vec<(&str, &str)> = client
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            !name.starts_with("x-forwarded-")
                && name != "x-real-ip"
                && name != "x-keyplane-node-key"
        })
        .copied()
        .collect();
    headers.extend([
        ("x-keyplane-node-key", node_key),
        ("x-forwarded-method", method),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "gpu-01.example"),
        ("x-forwarded-uri", uri),
        ("x-forwarded-for", peer),
        ("x-forwarded-port", "80"),
        ("x-real-ip", peer),
    ]);
    headers
}

/// Caddy `forward_auth` (no trusted_proxies): a GET with every client header
/// copied, X-Forwarded-Method/Uri set, X-Forwarded-For replaced with the
/// peer, the node key set by `header_up`; a client's X-Real-IP passes.
fn caddy_call<'a>(
    node_key: &'a str,
    method: &'a str,
    uri: &'a str,
    peer: &'a str,
    client: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let set = [
        "x-keyplane-node-key",
        "x-forwarded-method",
        "x-forwarded-uri",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    let mut headers: Vec<(&str, &str)> = client
        .iter()
        .filter(|(name, _)| !set.contains(&name.to_ascii_lowercase().as_str()))
        .copied()
        .collect();
    headers.extend([
        ("x-keyplane-node-key", node_key),
        ("x-forwarded-method", method),
        ("x-forwarded-uri", uri),
        ("x-forwarded-for", peer),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "gpu-01.example"),
    ]);
    headers
}

/// Envoy's HTTP ext_authz (deploy/envoy): the client's method, the path
/// after /v1/authz/check, Authorization and any `allowed_headers`, the
/// `headers_to_add` of the example, and Envoy's own address appended to
/// X-Forwarded-For.
fn envoy_call<'a>(
    node_key: &'a str,
    peer: &'a str,
    allowed: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut headers: Vec<(&str, &str)> = allowed
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name != "x-keyplane-node-key" && name != "x-real-ip"
        })
        .copied()
        .collect();
    headers.extend([
        ("x-keyplane-node-key", node_key),
        ("x-real-ip", peer),
        ("x-envoy-internal", "true"),
        ("x-forwarded-for", "10.9.9.9"),
    ]);
    headers
}

#[tokio::test]
async fn a_client_cannot_describe_its_own_request_behind_any_proxy() {
    let s = Setup::start(None).await;
    let bearer = format!("Bearer {}", s.models_key);
    let auth = ("authorization", bearer.as_str());
    let office = "10.1.2.3";
    let outside = "192.0.2.7";

    // nginx, the deployment's default here.
    let node = s.set_proxy(Value::Null).await;
    assert_eq!(node["forward_auth_proxy"], "nginx");
    assert_eq!(node["forward_auth_proxy_is_default"], true);
    let ok = s
        .call(
            "GET",
            "/v1/authz/check",
            &nginx_call(&s.node_key, "GET", "/v1/models", office, office, &[auth]),
        )
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-keyplane-instance"], s.instance.as_str());
    // A chat request dressed up as a models request, and an address from
    // outside the instance's networks dressed up as one inside.
    let forged_route = [
        auth,
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/v1/models"),
    ];
    let call = nginx_call(
        &s.node_key,
        "POST",
        "/v1/chat/completions",
        office,
        office,
        &forged_route,
    );
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);
    let call = nginx_call(
        &s.node_key,
        "GET",
        "/v1/models",
        outside,
        "10.1.2.3",
        &[auth],
    );
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);
    let call = nginx_call(&s.node_key, "GET", "/v1/models", outside, outside, &[auth]);
    assert_eq!(
        s.call("GET", "/v1/authz/check", &call).await.status(),
        401,
        "outside the instance's networks"
    );
    // Without a key, a forged public route opens nothing.
    let forged_public = [
        ("x-forwarded-uri", "/health"),
        ("x-forwarded-method", "GET"),
    ];
    let call = nginx_call(
        &s.node_key,
        "POST",
        "/v1/chat/completions",
        office,
        office,
        &forged_public,
    );
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);

    // Traefik: the client's X-Original-* and headers it adds are copied.
    s.set_proxy(json!("traefik")).await;
    let call = traefik_call(&s.node_key, "GET", "/v1/models", office, &[auth]);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 200);
    let forged = [
        auth,
        ("x-original-method", "GET"),
        ("x-original-uri", "/v1/models"),
    ];
    let call = traefik_call(&s.node_key, "POST", "/v1/chat/completions", office, &forged);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);
    let forged_public = [("x-original-method", "GET"), ("x-original-uri", "/health")];
    let call = traefik_call(
        &s.node_key,
        "POST",
        "/v1/chat/completions",
        office,
        &forged_public,
    );
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);
    let call = traefik_call(&s.node_key, "GET", "/v1/models", outside, &[auth]);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 401);
    // nginx's headers are not Traefik's: never read, even alone.
    let call = nginx_call(&s.node_key, "GET", "/v1/models", office, office, &[auth]);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);

    // Caddy: as Traefik, but a client's X-Real-IP passes through.
    s.set_proxy(json!("caddy")).await;
    let call = caddy_call(&s.node_key, "GET", "/v1/models?page=2", office, &[auth]);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 200);
    let forged = [auth, ("x-real-ip", office)];
    let call = caddy_call(&s.node_key, "GET", "/v1/models", outside, &forged);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);
    let forged = [
        auth,
        ("x-original-uri", "/v1/models"),
        ("x-original-method", "GET"),
    ];
    let call = caddy_call(&s.node_key, "POST", "/v1/chat/completions", office, &forged);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);

    // Envoy: the method and path are the call's own.
    let node = s.set_proxy(json!("envoy")).await;
    assert_eq!(node["forward_auth_proxy_is_default"], false);
    let call = envoy_call(&s.node_key, office, &[auth]);
    assert_eq!(
        s.call("GET", "/v1/authz/check/v1/models", &call)
            .await
            .status(),
        200
    );
    assert_eq!(
        s.call("POST", "/v1/authz/check/v1/chat/completions", &call)
            .await
            .status(),
        403,
        "a models:read key asking to chat"
    );
    assert_eq!(
        s.call("DELETE", "/v1/authz/check/v1/models/llama3", &call)
            .await
            .status(),
        403
    );
    let forged = [
        auth,
        ("x-original-uri", "/v1/models"),
        ("x-original-method", "GET"),
    ];
    let call = envoy_call(&s.node_key, office, &forged);
    assert_eq!(
        s.call("POST", "/v1/authz/check/v1/chat/completions", &call)
            .await
            .status(),
        403
    );
    let call = envoy_call(&s.node_key, outside, &[auth, ("x-forwarded-for", office)]);
    assert_eq!(
        s.call("GET", "/v1/authz/check/v1/models", &call)
            .await
            .status(),
        401,
        "Envoy's X-Real-IP, not the client's X-Forwarded-For"
    );
    // A node behind Envoy is never asked about a route in headers, nor a
    // node behind nginx about one in the URL.
    let call = traefik_call(&s.node_key, "GET", "/v1/models", office, &[auth]);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);
    s.set_proxy(json!("nginx")).await;
    let call = nginx_call(&s.node_key, "GET", "/v1/models", office, office, &[auth]);
    assert_eq!(
        s.call("GET", "/v1/authz/check/v1/models", &call)
            .await
            .status(),
        403
    );

    // Each refusal is audited with what was wrong, never with the key.
    let entries = eventually(
        std::time::Duration::from_secs(10),
        "the refusal in the audit log",
        || async {
            let (_, page) = s
                .server
                .admin(Method::GET, "/v1/audit?action=forward_auth.refused", None)
                .await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            (!items.is_empty()).then_some(items)
        },
    )
    .await;
    assert_eq!(entries[0]["outcome"], "denied");
    assert_eq!(entries[0]["target_id"], s.node_id.as_str());
    assert!(
        entries[0]["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("disagrees")
    );
    assert!(
        !serde_json::to_string(&entries)
            .unwrap()
            .contains(&s.models_key)
    );
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn paths_that_decode_into_another_route_are_refused() {
    let s = Setup::start(None).await;
    let bearer = format!("Bearer {}", s.models_key);
    let auth = ("authorization", bearer.as_str());
    let office = "10.1.2.3";
    for uri in [
        "/v1/models/%2e%2e/chat/completions",
        "/v1/models/..%2Fchat%2Fcompletions",
        "/v1/models/../chat/completions",
        "/v1/models/x%5c..%5cchat",
    ] {
        let call = nginx_call(&s.node_key, "GET", uri, office, office, &[auth]);
        let response = s.call("GET", "/v1/authz/check", &call).await;
        assert_eq!(response.status(), 403, "{uri}");
    }
    // An escaped letter is only a letter.
    let call = nginx_call(&s.node_key, "GET", "/v1/%6dodels", office, office, &[auth]);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 200);
    s.server.stop().await.unwrap();
}

#[tokio::test]
async fn the_deployment_default_proxy_applies_until_a_node_names_its_own() {
    let s = Setup::start(Some("caddy")).await;
    let bearer = format!("Bearer {}", s.models_key);
    let auth = ("authorization", bearer.as_str());
    let (_, node) = s
        .server
        .admin(Method::GET, &format!("/v1/nodes/{}", s.node_id), None)
        .await;
    assert_eq!(node["forward_auth_proxy"], "caddy");
    assert_eq!(node["forward_auth_proxy_is_default"], true);
    let call = caddy_call(&s.node_key, "GET", "/v1/models", "10.1.2.3", &[auth]);
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 200);
    // A public route answers 200 with empty identity headers, so a proxy
    // copying them upstream overwrites a client's forged copies.
    let call = caddy_call(&s.node_key, "GET", "/health", "10.1.2.3", &[]);
    let public = s.call("GET", "/v1/authz/check", &call).await;
    assert_eq!(public.status(), 200);
    assert_eq!(public.headers()["x-keyplane-instance"], "");

    // A node registered behind another proxy says so from the start.
    let (status, other) = s
        .server
        .admin(
            Method::POST,
            "/v1/nodes",
            Some(json!({"name": "edge-2", "forward_auth_proxy": "envoy"})),
        )
        .await;
    assert_eq!(status, 201, "{other}");
    assert_eq!(other["forward_auth_proxy"], "envoy");
    assert_eq!(other["forward_auth_proxy_is_default"], false);
    let (status, refused) = s
        .server
        .admin(
            Method::POST,
            "/v1/nodes",
            Some(json!({"name": "edge-3", "forward_auth_proxy": "haproxy"})),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["field"], "forward_auth_proxy");
    // A change takes effect at once (the node's cached facts are dropped),
    // and the node's id never changes.
    s.set_proxy(json!("traefik")).await;
    let call = caddy_call(&s.node_key, "GET", "/v1/models", "10.1.2.3", &[auth]);
    assert_eq!(
        s.call("GET", "/v1/authz/check", &call).await.status(),
        200,
        "Caddy's call is Traefik's, header for header where it matters"
    );
    s.set_proxy(json!("nginx")).await;
    assert_eq!(s.call("GET", "/v1/authz/check", &call).await.status(), 403);
    let node = s.set_proxy(Value::Null).await;
    assert_eq!(node["id"], s.node_id.as_str());
    assert_eq!(node["forward_auth_proxy"], "caddy");
    s.server.stop().await.unwrap();
}
