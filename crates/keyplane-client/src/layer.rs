//! A tower layer that puts an [`Introspector`] in front of any service, and
//! the axum extractor that reads what it verified.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Request, Response};
use futures_util::future::BoxFuture;
use keyplane_domain::{Access, RouteMap};

use crate::{Identity, Introspector, Refusal};

/// The verified caller of a request, put in its extensions by
/// [`KeyplaneLayer`]; also an axum extractor (401 when absent).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Identity>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response<Body>;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Refusal::InvalidKey.to_response())
    }
}

/// Checks each request's bearer key against the scope its route needs
/// (per a [`RouteMap`]); public routes pass without a key, unmapped ones are
/// refused. Refusals are OpenAI-shaped 401, 403 or 503 answers.
#[derive(Debug, Clone)]
pub struct KeyplaneLayer {
    introspector: Introspector,
    routes: Arc<RouteMap>,
}

impl KeyplaneLayer {
    /// Guards with `introspector`, mapping routes to scopes with `routes`.
    pub fn new(introspector: Introspector, routes: RouteMap) -> KeyplaneLayer {
        KeyplaneLayer {
            introspector,
            routes: Arc::new(routes),
        }
    }

    /// Decides one request: `Ok(None)` for a public route, the caller for a
    /// good key with the route's scope.
    pub async fn authorize(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<Arc<Identity>>, Refusal> {
        let scope = match self.routes.access(method, path) {
            Access::Public => return Ok(None),
            Access::Unmapped => return Err(Refusal::RouteDenied),
            Access::BadPath(err) => return Err(Refusal::BadPath(err)),
            Access::Scope(scope) => scope,
        };
        let token = bearer(headers).ok_or(Refusal::InvalidKey)?;
        self.introspector
            .check(token, Some(scope.as_str()), client_ip)
            .await
            .map(Some)
    }
}

/// The key in `Authorization: Bearer …`, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

impl<S> tower::Layer<S> for KeyplaneLayer {
    type Service = KeyplaneService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyplaneService {
            inner,
            guard: self.clone(),
        }
    }
}

/// The service [`KeyplaneLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct KeyplaneService<S> {
    inner: S,
    guard: KeyplaneLayer,
}

/// The refusal's answer. An HTTP/1 request whose body is left unread ends
/// its connection: the answer says so (`Connection: close`), so that clients
/// do not send their next request down a connection the server is closing.
fn refused<B>(request: &Request<B>, refusal: Refusal) -> Response<Body> {
    let mut response = refusal.to_response();
    let has_body = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() != b"0")
        || request
            .headers()
            .contains_key(axum::http::header::TRANSFER_ENCODING);
    if has_body && request.version() <= axum::http::Version::HTTP_11 {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

impl<S, B> tower::Service<Request<B>> for KeyplaneService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let guard = self.guard.clone();
        Box::pin(async move {
            let client_ip = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip());
            let decision = guard
                .authorize(
                    request.method().as_str(),
                    request.uri().path(),
                    request.headers(),
                    client_ip,
                )
                .await;
            match decision {
                Ok(Some(identity)) => {
                    request.extensions_mut().insert(Caller(identity));
                }
                Ok(None) => {}
                Err(refusal) => return Ok(refused(&request, refusal)),
            }
            inner.call(request).await
        })
    }
}
