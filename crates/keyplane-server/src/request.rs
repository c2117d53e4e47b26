//! Per-request context: the request id, what the matched route records
//! (metrics, refusals by role or policy), and the identity on the span.
//! The envelope every answer goes through is [`crate::envelope`].

use std::time::Instant;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use uuid::Uuid;

use crate::error::{POLICY_REFUSED, PendingProblem};
use crate::ops::denials::{self, Denial};
use crate::ops::{Actor, Origin};
use crate::state::AppState;

/// The header a request id arrives and leaves in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of one request: the caller's `X-Request-Id` when it is a sane token,
/// a fresh UUID otherwise.
#[derive(Debug, Clone)]
pub struct RequestId(String);

impl RequestId {
    /// Accepts 1 to 128 characters of `A-Z a-z 0-9 - _ . : /` that do not
    /// look like a key; anything else (which could forge log lines or carry a
    /// secret into them) is replaced.
    pub(crate) fn from_request(request: &Request) -> RequestId {
        let given = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=128).contains(&v.len())
                    && v.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')
                    })
                    && matches!(
                        keyplane_domain::scrub_keys(v),
                        std::borrow::Cow::Borrowed(_)
                    )
            });
        match given {
            Some(id) => RequestId(id.to_owned()),
            None => RequestId(Uuid::new_v4().to_string()),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the operator behind a request is noted once authenticated, so that
/// a refusal of what it asked for can be audited after the handler answers.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(std::sync::Arc<std::sync::OnceLock<Actor>>);

impl CallerSlot {
    /// Notes the authenticated operator (the first one noted stays).
    pub fn set(&self, actor: Actor) {
        let _ = self.0.set(actor);
    }

    /// The authenticated operator, if the request had one.
    pub fn get(&self) -> Option<&Actor> {
        self.0.get()
    }
}

/// Where a request came from: its id and the peer's address (the proxy's,
/// behind one).
pub fn origin(extensions: &axum::http::Extensions) -> Origin {
    Origin {
        request_id: extensions
            .get::<RequestId>()
            .map(|id| id.as_str().to_owned()),
        client_ip: extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip()),
    }
}

/// Records, for every routed request, the matched route template on its
/// span (never the raw path, which may carry ids) and in the metrics, and
/// audits an operator's refusal by role or policy. A tower layer rather
/// than a `from_fn` middleware: the hot path pays no clone of the route's
/// service and no boxed future for it.
#[derive(Clone)]
pub struct ObserveRouteLayer(pub AppState);

impl<S> tower::Layer<S> for ObserveRouteLayer {
    type Service = ObserveRoute<S>;

    fn layer(&self, inner: S) -> ObserveRoute<S> {
        ObserveRoute {
            inner,
            state: self.0.clone(),
        }
    }
}

/// See [`ObserveRouteLayer`].
#[derive(Clone)]
pub struct ObserveRoute<S> {
    inner: S,
    state: AppState,
}

impl<S> tower::Service<Request> for ObserveRoute<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let observed = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .cloned()
            .map(|route| {
                tracing::Span::current().record("route", route.as_str());
                // Only operators' requests can be refused by role or policy;
                // node routes (the hot path) and public ones skip the bookkeeping.
                let operator_route =
                    route.as_str().starts_with("/v1/") && !NODE_ROUTES.contains(&route.as_str());
                let audit = operator_route.then(|| {
                    let caller = CallerSlot::default();
                    request.extensions_mut().insert(caller.clone());
                    (caller, origin(request.extensions()))
                });
                Observed {
                    state: self.state.clone(),
                    method: request.method().clone(),
                    route,
                    audit,
                    started: Instant::now(),
                }
            });
        ObservedFuture {
            inner: self.inner.call(request),
            observed,
        }
    }
}

/// What is noted about a routed request once it is answered.
struct Observed {
    state: AppState,
    method: Method,
    route: axum::extract::MatchedPath,
    audit: Option<(CallerSlot, Origin)>,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// The answer of an [`ObserveRoute`].
    pub struct ObservedFuture<F> {
        #[pin]
        inner: F,
        observed: Option<Observed>,
    }
}

impl<F> std::future::Future for ObservedFuture<F>
where
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        if let Some(observed) = this.observed.take() {
            observed.answered(&response);
        }
        std::task::Poll::Ready(Ok(response))
    }
}

impl Observed {
    fn answered(self, response: &Response) {
        let status = response.status();
        let route = self.route.as_str();
        self.state
            .metrics
            .answered(&self.method, route, status, self.started.elapsed());
        let Some((caller, origin)) = self.audit else {
            return;
        };
        let refused_by_policy = response
            .extensions()
            .get::<PendingProblem>()
            .is_some_and(|problem| problem.code == POLICY_REFUSED);
        if let Some(actor) = caller.get()
            && (status == StatusCode::FORBIDDEN || refused_by_policy)
        {
            audit_refusal(&self.state, actor, &self.method, route, status, &origin);
        }
    }
}

/// The route Envoy's ext_authz calls: `/v1/authz/check` followed by the
/// client's path, with the client's method (any).
pub const ENVOY_CHECK_ROUTE: &str = "/v1/authz/check/{*path}";

/// The routes nodes call with their node keys.
const NODE_ROUTES: [&str; 5] = [
    "/v1/introspect",
    "/v1/authz/check",
    ENVOY_CHECK_ROUTE,
    "/v1/revocations/stream",
    "/v1/heartbeat",
];

/// An operator refused by its role (403) or by policy (422: a lifetime past
/// the maximum, a scope outside a ceiling, ...) is audited: the first refusal
/// per operator per minute, so a script retrying in a loop cannot flood the log.
fn audit_refusal(
    state: &AppState,
    actor: &Actor,
    method: &Method,
    route: &str,
    status: StatusCode,
    origin: &Origin,
) {
    let now = state.clock.now();
    if state
        .policy_refusals
        .count(actor.to_string(), now)
        .is_none()
    {
        return;
    }
    denials::record(
        state,
        Denial {
            at: now,
            actor,
            action: "policy.refused",
            target_type: "route",
            target_id: Some(format!("{method} {route}")),
            origin: Some(origin),
            details: serde_json::json!({ "status": status.as_u16() }),
        },
    );
}

/// Names the key behind a request on its span: ids only, never the key.
pub fn record_identity(node_id: Option<Uuid>, verdict: Option<(Uuid, Uuid)>) {
    let span = tracing::Span::current();
    if let Some(node_id) = node_id {
        span.record("node_id", tracing::field::display(node_id));
    }
    if let Some((instance_id, key_id)) = verdict {
        span.record("instance_id", tracing::field::display(instance_id));
        span.record("key_id", tracing::field::display(key_id));
    }
}
