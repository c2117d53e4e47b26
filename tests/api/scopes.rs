//! The scope catalog: built-in scopes cover Cortex's whole API, operators
//! define their own, and a gate's route rules require them.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Gate, TestServer, stub_upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_define_scopes_that_keys_carry_and_gates_require() {
    let server = TestServer::start_admin().await;
    let (status, list) = server.admin(Method::GET, "/v1/scopes", None).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for cortex in [
        "engines:write",
        "threads:read",
        "messages:write",
        "process:admin",
    ] {
        assert!(names.contains(&cortex), "{cortex} missing: {names:?}");
    }

    // Unknown until defined: refused, naming the field.
    let instance_body =
        json!({"name": "jan-1", "allowed_scopes": ["inference:chat", "inference:rerank"]});
    let (status, body) = server
        .admin(Method::POST, "/v1/instances", Some(instance_body.clone()))
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("allowed_scopes[1]")),
        "{body}"
    );

    for (name, status) in [("inference:rerank", 201), ("inference:rerank", 200)] {
        let (got, body) = server
            .admin(
                Method::PUT,
                &format!("/v1/scopes/{name}"),
                Some(json!({"description": "Rerank documents"})),
            )
            .await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["built_in"], false);
    }
    // Built-in scopes and malformed names cannot be defined.
    let (status, _) = server
        .admin(Method::PUT, "/v1/scopes/inference:chat", Some(json!({})))
        .await;
    assert_eq!(status, 409);
    for bad in ["Rerank", "a:b:c", "no-colon"] {
        let (status, body) = server
            .admin(Method::PUT, &format!("/v1/scopes/{bad}"), Some(json!({})))
            .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("name")),
            "{bad}: {body}"
        );
    }

    let (status, instance) = server
        .admin(Method::POST, "/v1/instances", Some(instance_body))
        .await;
    assert_eq!(status, 201, "{instance}");
    let key = server
        .key(
            instance["id"].as_str().unwrap(),
            json!({"name": "k", "scopes": ["inference:rerank"]}),
        )
        .await;
    assert_eq!(key["effective_scopes"], json!(["inference:rerank"]));

    // In use: it stays.
    let (status, body) = server
        .admin(Method::DELETE, "/v1/scopes/inference:rerank", None)
        .await;
    assert_eq!(status, 409, "{body}");

    // A gate whose rule maps a route to it.
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "gate-1"})))
        .await;
    let upstream = stub_upstream().await;
    let base = format!("http://{}", server.addr);
    let _gate = Gate::start(
        &[
            ("KEYPLANE_URL", &base),
            ("KEYPLANE_NODE_KEY", node["secret"].as_str().unwrap()),
            ("KEYPLANE_GATE_UPSTREAM", &upstream),
            ("KEYPLANE_ROUTE_SCOPES", "POST /v1/rerank=inference:rerank"),
        ],
        std::process::Stdio::null(),
    )
    .await;
    let client = reqwest::Client::new();
    let post = |path: &str| {
        client
            .post(format!("{}{path}", _gate.base))
            .bearer_auth(key["secret"].as_str().unwrap())
            .json(&json!({"model": "m", "query": "q"}))
            .send()
    };
    assert_eq!(post("/v1/rerank").await.unwrap().status(), 200);
    let refused = post("/v1/chat/completions").await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_scope");

    // Audited, and gone once nothing names it.
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .admin(
            Method::DELETE,
            &format!("/v1/instances/{}", instance["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = server
        .admin(Method::DELETE, "/v1/scopes/inference:rerank", None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (_, audit) = server
        .admin(Method::GET, "/v1/audit?target=inference:rerank", None)
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"scope.define") && actions.contains(&"scope.delete"),
        "{actions:?}"
    );
}
