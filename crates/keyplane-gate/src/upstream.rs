//! The connection to the upstream: hyper's pooled client, HTTP/1.1 over
//! TCP or TLS (the platform's roots), nothing between the gate and it. A
//! general HTTP client (redirects, retries, URL parsing with IDNA) cost more
//! than a third of the gate's own time per request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_platform_verifier::BuilderVerifierExt;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How long a connection to the upstream may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle connection to the upstream is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The upstream, and the pool of connections to it.
pub struct Upstream {
    client: Client<Connector, Body>,
    /// `scheme://authority` and the base path, without a trailing slash.
    base: String,
}

/// Why a request could not be passed on.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The path and query do not make a URI with the base.
    #[error("the request's path cannot be passed on")]
    Uri(#[from] axum::http::uri::InvalidUri),
    /// Connecting, writing the request or reading the answer's head failed.
    #[error("the upstream cannot be reached: {0}")]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl Upstream {
    /// A client for `base` (`http://` or `https://`, with any base path).
    pub fn new(base: &str) -> anyhow::Result<Upstream> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS for the upstream")?
            .with_platform_verifier()
            .context("the platform's certificate roots")?
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// The upstream's URI for a request's `path_and_query`.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, SendError> {
        let mut uri = String::with_capacity(self.base.len() + path_and_query.len());
        uri.push_str(&self.base);
        uri.push_str(path_and_query);
        Ok(Uri::try_from(uri)?)
    }

    /// Sends `request` (its URI made by [`Upstream::uri`]); answers once
    /// the upstream's head has arrived, the body to be read as it comes.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        Ok(self.client.request(request).await?)
    }
}
