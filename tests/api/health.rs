use serde_json::Value;

use crate::support::TestServer;

#[tokio::test]
async fn healthz_says_the_process_is_up_and_names_its_mode() {
    let server = TestServer::start().await;
    let response = server.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["mode"], "dev");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_is_ready_once_migrations_are_applied() {
    let server = TestServer::start().await;
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert!(uuid::Uuid::parse_str(body["deployment_id"].as_str().unwrap()).is_ok());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../openapi/openapi.json"
    ))
    .expect("openapi/openapi.json exists");
    let generated = keyplane_server::routes::openapi().to_pretty_json().unwrap();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale: regenerate it with \
         `cargo run -p keyplane-server -- openapi > openapi/openapi.json`"
    );

    let server = TestServer::start().await;
    let served: Value = server.get("/openapi.json").await.json().await.unwrap();
    let committed: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(served, committed);
    assert!(served["paths"]["/readyz"]["get"]["responses"]["503"].is_object());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn docs_page_serves_interactive_api_documentation() {
    let server = TestServer::start().await;
    let response = server.get("/docs").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Only keyplane's own script runs, from keyplane's origin.
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let page = response.text().await.unwrap();
    assert!(page.contains("api-reference") && page.contains("/readyz"));
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "nothing from another origin: {page:.300}"
    );
    let script = server.get("/docs/scalar.js").await;
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        script.bytes().await.unwrap().len() > 100_000,
        "the whole of Scalar"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_requests_and_their_latency_by_route() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        assert_eq!(server.get("/healthz").await.status(), 200);
    }
    let missing = format!("/v1/keys/{}", uuid::Uuid::new_v4());
    assert_eq!(server.get(&missing).await.status(), 401);

    let text = server.get("/metrics").await.text().await.unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(r#"keyplane_http_requests_total{method="GET",route="/healthz",status="2xx"} 3"#),
        "{text}"
    );
    assert!(has(
        r#"keyplane_http_requests_total{method="GET",route="/v1/keys/{id}",status="4xx"} 1"#
    ));
    assert!(has(
        r#"keyplane_http_request_duration_seconds_count{method="GET",route="/healthz"} 3"#
    ));
    assert!(has(
        r#"keyplane_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="+Inf"} 3"#
    ));
    // The template, never the path: no id appears in a label.
    assert!(!text.contains(&missing));
}
