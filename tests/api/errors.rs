use reqwest::StatusCode;
use serde_json::Value;

use crate::support::TestServer;

/// Checks the RFC 9457 shape every error shares and answers the body.
async fn problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["code"], code);
    assert_eq!(body["request_id"], echoed.as_str());
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} in {body}"
        );
    }
    body
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let server = TestServer::start().await;
    problem(
        server.get("/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem() {
    let server = TestServer::start().await;
    let response = server
        .client
        .delete(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let server = TestServer::start().await;
    let response = server
        .client
        .post(server.url("/healthz"))
        .header("content-type", "application/json")
        .body(vec![b' '; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_given_request_id_is_echoed_and_a_missing_one_is_made_up() {
    let server = TestServer::start().await;
    let given = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");

    let missing = server.get("/healthz").await;
    let made_up = missing.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(made_up).is_ok());

    // A request id that could forge log lines is replaced, not echoed.
    let hostile = server
        .client
        .get(server.url("/nope"))
        .header("x-request-id", "forged\" level=error msg=\"pwned")
        .send()
        .await
        .unwrap();
    let replaced = hostile.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&replaced).is_ok());
    let body = problem(hostile, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(body["request_id"], replaced.as_str());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let url = crate::support::fresh_database().await;
    let server = TestServer::start_with(keyplane_server::Settings {
        connections: keyplane_tls::ConnectionLimits {
            header_timeout: std::time::Duration::from_secs(1),
            ..keyplane_tls::ConnectionLimits::default()
        },
        ..crate::support::settings_for(&url)
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: keyplane\r\nX-Slow: ")
        .await
        .unwrap();
    // The server closes the connection (a generous deadline; it takes about 1 s).
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), slow.read(&mut buffer))
        .await
        .expect("the half-sent request is still held open");
    assert!(matches!(closed, Ok(0) | Err(_)) || buffer.starts_with(b"HTTP/1.1 408"));
    // Everyone else is served as usual.
    assert_eq!(server.get("/healthz").await.status(), 200);
}
