//! The limit every keyplane throughput figure is measured against: axum's
//! hello world on the same tokio runtime and HTTP stack keyplane serves
//! with, and nothing else. `bench/introspect.sh` runs it beside keyplane.
//!
//! It is also the upstream `bench/gate.sh` puts the gate and nginx in front
//! of: every other path answers the same hello, and a chat completion gets
//! a fixed answer, as one JSON body or (`"stream": true`) as server-sent
//! events, at once.
//!
//!     HELLO_LISTEN=127.0.0.1:18180 target/release/keyplane-bench-hello

use axum::Router;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};

async fn hello() -> &'static str {
    "Hello, World!"
}

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;

const EVENTS: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench-model","choices":[{"index":0,"delta":{"role":"assistant","content":"o"}}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench-model","choices":[{"index":0,"delta":{"content":"k"},"finish_reason":"stop"}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench-model","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

async fn chat(body: Bytes) -> impl IntoResponse {
    let streamed = body
        .windows(b"\"stream\":true".len())
        .any(|w| w == b"\"stream\":true");
    match streamed {
        true => ([(CONTENT_TYPE, "text/event-stream")], EVENTS),
        false => ([(CONTENT_TYPE, "application/json")], ANSWER),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("HELLO_LISTEN").unwrap_or_else(|_| "127.0.0.1:18180".to_owned());
    let app = Router::new()
        .route("/", get(hello))
        .route("/v1/chat/completions", post(chat))
        .fallback(hello);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await
}
