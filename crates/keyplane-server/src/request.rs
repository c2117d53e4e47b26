//! Per-request context: the request id, the tracing span every log line of
//! the request is written in, and the problem body of error answers.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{POLICY_REFUSED, PendingProblem, render_problem};
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
    fn from_request(request: &Request) -> RequestId {
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

/// Records the matched route template (never the raw path, which may carry
/// ids) on the request's span; runs after routing.
pub async fn observe_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(route) = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned()
    else {
        return next.run(request).await;
    };
    tracing::Span::current().record("route", route.as_str());
    let method = request.method().clone();
    // Only operators' requests can be refused by role or policy; node routes
    // (the hot path) and public ones skip the bookkeeping.
    let operator_route =
        route.as_str().starts_with("/v1/") && !NODE_ROUTES.contains(&route.as_str());
    let audit_context = operator_route.then(|| {
        let caller = CallerSlot::default();
        request.extensions_mut().insert(caller.clone());
        (caller, origin(request.extensions()))
    });
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    state
        .metrics
        .answered(&method, route.as_str(), status, started.elapsed());
    let Some((caller, origin)) = audit_context else {
        return response;
    };
    let refused_by_policy = response
        .extensions()
        .get::<PendingProblem>()
        .is_some_and(|problem| problem.code == POLICY_REFUSED);
    if let Some(actor) = caller.get()
        && (status == StatusCode::FORBIDDEN || refused_by_policy)
    {
        audit_refusal(&state, actor, &method, route.as_str(), status, &origin);
    }
    response
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

/// Gives the request its id and span, logs its outcome, writes the problem
/// body of an error answer and echoes the id back.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let id = RequestId::from_request(&request);
    request.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(
        "request",
        request_id = %id.as_str(),
        method = %request.method(),
        // A key pasted into a URL must not reach the logs.
        path = %keyplane_domain::scrub_keys(request.uri().path()),
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        node_id = tracing::field::Empty,
        instance_id = tracing::field::Empty,
        key_id = tracing::field::Empty,
    );
    // A caller's W3C traceparent makes this request part of its trace.
    keyplane_telemetry::set_parent_from(&span, request.headers());
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let mut response = render_problem(response, id.as_str());
    let status = response.status();
    span.record("status", status.as_u16());
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(latency_ms, "request answered");
        } else {
            tracing::debug!(latency_ms, "request answered");
        }
    });
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
