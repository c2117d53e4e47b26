//! The limit every keyplane throughput figure is measured against: axum's
//! hello world on the same tokio runtime and HTTP stack keyplane serves
//! with, and nothing else. `bench/introspect.sh` runs it beside keyplane.
//!
//!     HELLO_LISTEN=127.0.0.1:18180 target/release/keyplane-bench-hello

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::var("HELLO_LISTEN").unwrap_or_else(|_| "127.0.0.1:18180".to_owned());
    let app = Router::new().route("/", get(|| async { "Hello, World!" }));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await
}
