//! The node-facing API: introspection (RFC 7662), forward auth for proxies,
//! and the revocation stream.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use futures_util::Stream;
use keyplane_domain::{Access, Call, ENVOY_PATH_PREFIX, KeyKind, KeySecret};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::bearer;
use crate::error::{ApiError, Problem};
use crate::extract::FormOrJson;
use crate::introspection::{CachedNode, Lookup, Unavailable, Verdict};
use crate::ops::Node;
use crate::ops::node_calls::{self, FeedItem};
use crate::request::record_identity;
use crate::state::AppState;

/// The header forward-auth callers put their node key in.
pub const NODE_KEY_HEADER: &str = "x-keyplane-node-key";

/// An authenticated node: a live node key as a bearer token, in
/// `X-Keyplane-Node-Key`, or as the password of HTTP Basic with the node's id
/// as the user name (for off-the-shelf RFC 7662 clients); or, with
/// `KEYPLANE_TLS_CLIENT_CA`, a client certificate naming the node. A request
/// with both must have them agree.
#[derive(Debug, Clone)]
pub struct NodeAuth(pub Arc<CachedNode>);

fn bad_node() -> ApiError {
    ApiError::Unauthorized {
        code: "invalid_node_credentials",
        detail: "send a node key as Authorization: Bearer kpn_… (or HTTP Basic: node id and node key)",
    }
}

impl From<Unavailable> for ApiError {
    fn from(err: Unavailable) -> Self {
        ApiError::Unavailable {
            code: "database_unavailable",
            detail: err.to_string(),
        }
    }
}

impl From<Lookup> for ApiError {
    fn from(err: Lookup) -> Self {
        match err {
            Lookup::Unavailable => Unavailable.into(),
            Lookup::Busy(wait) => ApiError::TooManyRequests {
                retry_after: wait.as_secs().max(1),
            },
        }
    }
}

impl FromRequestParts<AppState> for NodeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let certificate = parts
            .extensions
            .get::<Arc<keyplane_tls::ClientCertificate>>()
            .cloned();
        let now = state.clock.now();
        let address = crate::auth::peer(parts);
        let node = match (node_credential(parts), certificate) {
            (Some((token, claimed_id)), certificate) => {
                // A live node key is checked whatever its address did
                // before; an unknown one is refused unseen once it, or its
                // address, keeps failing.
                let known = KeySecret::parse_as(KeyKind::Node, &token)
                    .is_ok_and(|key| state.credentials.node(key.digest().as_bytes()));
                if !known {
                    state.limits.check_unknown(address, &token)?;
                }
                let node = state
                    .introspector
                    .node(&token, now)
                    .await?
                    .filter(|node| claimed_id.is_none_or(|id| id == node.id))
                    .filter(|node| certificate.is_none_or(|c| node.identified_by(&c)));
                if node.is_none() {
                    state.limits.note_failure(address, Some(&token));
                }
                node
            }
            (None, Some(certificate)) => {
                // Boxed: a node's own requests need not carry this future.
                Box::pin(state.introspector.certified_node(&certificate, now)).await?
            }
            (None, None) => None,
        }
        .ok_or_else(bad_node)?;
        if let Some(certificate) = parts
            .extensions
            .get::<Arc<keyplane_tls::ClientCertificate>>()
            && node.note_certificate(certificate)
        {
            node_calls::note_certificate(state, node.id, certificate.not_after);
        }
        state.limits.check_node(node.id)?;
        Ok(NodeAuth(node))
    }
}

impl FromRequestParts<AppState> for Node {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let NodeAuth(node) = NodeAuth::from_request_parts(parts, state).await?;
        Ok(Node {
            id: node.id,
            name: node.name.clone(),
            key: node.key,
        })
    }
}

/// The node key of a request and, with HTTP Basic, the id it claims.
/// Borrowed from the headers unless it had to be decoded.
fn node_credential(parts: &Parts) -> Option<(Cow<'_, str>, Option<Uuid>)> {
    if let Some(key) = parts
        .headers
        .get(NODE_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Some((Cow::Borrowed(key.trim()), None));
    }
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(rest.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        return Some((
            Cow::Owned(password.to_owned()),
            Some(Uuid::parse_str(user).ok()?),
        ));
    }
    // Forward auth carries the client's key as the bearer token: only a node
    // key there is the node's credential (else a certificate may be).
    bearer(parts)
        .filter(|token| token.starts_with("kpn_"))
        .map(|token| (Cow::Borrowed(token), None))
}

/// An introspection request (RFC 7662), as a form or as JSON.
#[derive(Debug, Deserialize, ToSchema)]
pub struct IntrospectRequest {
    /// The key to check.
    pub token: String,
    /// Space-separated scopes the node needs; the key must have them all.
    pub scope: Option<String>,
    /// The address the node saw the client at, checked against the instance's networks.
    pub client_ip: Option<String>,
    /// Accepted and ignored (RFC 7662).
    pub token_type_hint: Option<String>,
}

/// The answer: for any key that is not good, exactly `{"active": false}`.
/// It borrows from the cache entry, so the hot path copies no strings.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct IntrospectResponse<'a> {
    /// Whether the key is good for this node, scope and address now.
    pub active: bool,
    /// `api_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// The key's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Uuid>,
    /// The instance's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Uuid>,
    /// The instance's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<Uuid>,
    /// The instance's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<&'a str>,
    /// The key's effective scopes, space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a str>,
    /// The node this answer is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a [Uuid]>,
    /// When the key stops working (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// When the key was issued (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// When the key started working (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Who answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    /// How many seconds the node may cache this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<u64>,
    /// The key's rate limits and token budgets (the tighter of its own and
    /// its instance's), enforced by the node; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::ops::limits::LimitsBody>)]
    pub limits: Option<&'a keyplane_domain::Limits>,
    /// The models the key may use (names, or prefixes ending in `*`);
    /// absent: every model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<&'a [String]>,
}

/// The media type of signed answers (RFC 9701).
pub const SIGNED_ANSWER: &str = "application/token-introspection+jwt";

/// Whether the node asked for a signed answer (`Accept:
/// application/token-introspection+jwt`); reads that one header rather than
/// copying them all.
pub struct WantsSigned(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for WantsSigned {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(WantsSigned(
            parts
                .headers
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains(SIGNED_ANSWER)),
        ))
    }
}

/// The claims of a signed answer (RFC 9701).
#[derive(Debug, Serialize)]
struct SignedAnswer<'a> {
    iss: &'a str,
    aud: String,
    iat: i64,
    token_introspection: &'a IntrospectResponse<'a>,
}

/// Answers as JSON, or as a JWT signed with the current signing key when the
/// node asked for one.
fn answer(
    state: &AppState,
    node: &CachedNode,
    body: IntrospectResponse<'_>,
    cache_control: &str,
    signed: bool,
    now: DateTime<Utc>,
) -> Result<Response, ApiError> {
    let mut response = if signed {
        let claims = SignedAnswer {
            iss: &state.issuer,
            aud: node.id.to_string(),
            iat: now.timestamp(),
            token_introspection: &body,
        };
        let jwt = state.signer.sign("token-introspection+jwt", &claims)?;
        let mut response = jwt.into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(SIGNED_ANSWER));
        response
    } else {
        // Sized for a whole active answer up front: no regrowth on the hot path.
        let mut json = Vec::with_capacity(512);
        serde_json::to_writer(&mut json, &body).map_err(|err| ApiError::Internal(err.into()))?;
        (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            json,
        )
            .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(cache_control) {
        response.headers_mut().insert(CACHE_CONTROL, value);
    }
    Ok(response)
}

fn active_body<'a>(
    state: &'a AppState,
    node: &'a CachedNode,
    verdict: &'a Verdict,
    now: DateTime<Utc>,
) -> (IntrospectResponse<'a>, u64) {
    let remaining = (verdict.ends_at() - now).num_seconds().max(0);
    let cache_ttl = state
        .settings
        .introspection_cache_ttl
        .as_secs()
        .min(u64::try_from(remaining).unwrap_or(0));
    let body = IntrospectResponse {
        active: true,
        token_type: Some("api_key"),
        key_id: Some(verdict.key_id),
        client_id: Some(verdict.instance_id),
        sub: Some(verdict.instance_id),
        instance_name: Some(&verdict.instance_name),
        scope: Some(&verdict.scope_text),
        aud: Some(std::slice::from_ref(&node.id)),
        exp: Some(verdict.ends_at().timestamp()),
        iat: Some(verdict.issued_at().timestamp()),
        nbf: Some(verdict.issued_at().timestamp()),
        iss: Some(&state.issuer),
        cache_ttl: Some(cache_ttl),
        limits: (!verdict.limits().is_unlimited()).then_some(verdict.limits()),
        models: verdict.models(),
    };
    (body, cache_ttl)
}

/// Introspect a key (RFC 7662). Every key that is not good for this node,
/// scope and address gets exactly `{"active": false}`, whatever the reason.
#[utoipa::path(
    post, path = "/v1/introspect", operation_id = "introspect", tag = "nodes",
    request_body(
        content((IntrospectRequest = "application/x-www-form-urlencoded"), (IntrospectRequest = "application/json")),
    ),
    responses(
        (status = 200, description = "The answer", body = IntrospectResponse),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is not available", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("basic" = [])),
)]
pub async fn introspect(
    State(state): State<AppState>,
    NodeAuth(node): NodeAuth,
    WantsSigned(signed): WantsSigned,
    FormOrJson(request): FormOrJson<IntrospectRequest>,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    // An address that does not parse is treated as unknown, which networks refuse.
    let client_ip = request
        .client_ip
        .as_deref()
        .and_then(|t| t.trim().parse::<IpAddr>().ok());
    let bad_address = request.client_ip.is_some() && client_ip.is_none();
    let wanted = request.scope.as_deref().unwrap_or("");
    let verdict = match bad_address {
        false => {
            state
                .introspector
                .introspect(
                    &request.token,
                    node.id,
                    wanted,
                    client_ip,
                    now,
                    &state.limits,
                )
                .await?
        }
        true => None,
    };
    state.metrics.introspected(node.id, verdict.is_some());
    record_identity(
        Some(node.id),
        verdict.as_ref().map(|v| (v.instance_id, v.key_id)),
    );
    match verdict {
        Some(verdict) => {
            let (body, ttl) = active_body(&state, &node, &verdict, now);
            answer(
                &state,
                &node,
                body,
                &format!("private, max-age={ttl}"),
                signed,
                now,
            )
        }
        None => {
            node_calls::note_inactive(&state, &node, now);
            answer(
                &state,
                &node,
                IntrospectResponse::default(),
                "no-store",
                signed,
                now,
            )
        }
    }
}

/// The public keys that verify signed introspection answers: the current
/// signing key and the previous one.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", operation_id = "get_jwks", tag = "nodes",
    responses((status = 200, description = "A JSON Web Key Set (RFC 7517)", body = Object)),
)]
pub async fn jwks(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.signer.jwks())
}

/// One value of a header: None when absent, an error when repeated or not text.
fn one_header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, keyplane_domain::Unreadable> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => value
            .to_str()
            .map(Some)
            .map_err(|_| keyplane_domain::Unreadable),
        (Some(_), Some(_)) => Err(keyplane_domain::Unreadable),
    }
}

/// Forward auth for nginx `auth_request`, Traefik ForwardAuth and Caddy
/// `forward_auth`: 200 with the identity in headers, 401 for a bad key, 403
/// for a good key short of the route's scope, a route no rule maps, or a
/// call whose headers do not describe the request the way the node's proxy
/// does (see `forward_auth_proxy` on the node).
#[utoipa::path(
    get, path = "/v1/authz/check", operation_id = "check_access", tag = "nodes",
    params(
        ("X-Keyplane-Node-Key" = String, Header, description = "The node's own key"),
        ("X-Original-Method" = Option<String>, Header, description = "nginx: the client's method"),
        ("X-Original-URI" = Option<String>, Header, description = "nginx: the client's path and query"),
        ("X-Real-IP" = Option<String>, Header, description = "nginx: the client's address"),
        ("X-Forwarded-Method" = Option<String>, Header, description = "Traefik, Caddy: the client's method"),
        ("X-Forwarded-Uri" = Option<String>, Header, description = "Traefik, Caddy: the client's path and query"),
        ("X-Forwarded-For" = Option<String>, Header, description = "Traefik, Caddy: the client's address, last"),
    ),
    responses(
        (status = 200, description = "Allowed; X-Keyplane-Instance, X-Keyplane-Key-Id and X-Keyplane-Scopes name the caller"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn check_access(
    State(state): State<AppState>,
    NodeAuth(node): NodeAuth,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(
        &state,
        &node,
        &headers,
        Call {
            method: method.as_str(),
            path: None,
        },
    )
    .await
}

/// [`check_access`], for proxies that forward the request's method.
#[utoipa::path(
    post, path = "/v1/authz/check", operation_id = "check_access_post", tag = "nodes",
    responses(
        (status = 200, description = "Allowed"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn check_access_post(
    State(state): State<AppState>,
    NodeAuth(node): NodeAuth,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(
        &state,
        &node,
        &headers,
        Call {
            method: method.as_str(),
            path: None,
        },
    )
    .await
}

pub use crate::request::ENVOY_CHECK_ROUTE;

/// Forward auth for Envoy's HTTP ext_authz (`path_prefix: /v1/authz/check`),
/// which calls with the client's own method and its path after the prefix.
/// Answers as [`check_access`] does.
#[utoipa::path(
    method(get, post, put, patch, delete), path = "/v1/authz/check/{path}",
    operation_id = "check_access_envoy", tag = "nodes",
    params(
        ("path" = String, Path, description = "The client's path (and query), after the prefix"),
        ("X-Keyplane-Node-Key" = String, Header, description = "The node's own key"),
        ("X-Real-IP" = String, Header, description = "The client's address (headers_to_add)"),
    ),
    responses(
        (status = 200, description = "Allowed; X-Keyplane-Instance, X-Keyplane-Key-Id and X-Keyplane-Scopes name the caller"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn check_access_envoy(
    State(state): State<AppState>,
    NodeAuth(node): NodeAuth,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The path as sent, not as decoded: the route rules decode it themselves
    // and refuse what decodes ambiguously.
    let sent = uri.path_and_query().map_or("", |p| p.as_str());
    let path = sent
        .strip_prefix(ENVOY_PATH_PREFIX)
        .filter(|p| p.starts_with('/'));
    let call = Call {
        method: method.as_str(),
        path: Some(path.unwrap_or("/")),
    };
    authorize(&state, &node, &headers, call).await
}

async fn authorize(
    state: &AppState,
    node: &CachedNode,
    headers: &HeaderMap,
    call: Call<'_>,
) -> Result<Response, ApiError> {
    let proxy = node
        .forward_auth_proxy
        .unwrap_or(state.settings.forward_auth_proxy);
    // Only the node's proxy describes the request; a call it could not
    // have made (its headers missing, others' headers disagreeing) is refused
    // before the client's key is even looked at.
    let original = proxy
        .original(|name| one_header(headers, name), call)
        .map_err(|err| node_calls::refuse_forwarded(state, node, proxy, err))?;
    let scope = match state.routes.access(original.method, original.uri) {
        Access::Public => return Ok(allowed(None)),
        Access::Scope(scope) => Some(scope),
        Access::Unmapped => None,
        Access::BadPath(err) => return Err(ApiError::Forbidden(err.to_string())),
    };
    let bad_key = || ApiError::Unauthorized {
        code: "invalid_credentials",
        detail: "send a live API key as Authorization: Bearer kpi_…",
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(bad_key)?;
    let now = state.clock.now();
    let verdict = state
        .introspector
        .introspect(
            token,
            node.id,
            "",
            Some(original.client_ip),
            now,
            &state.limits,
        )
        .await?
        .ok_or_else(bad_key)?;
    record_identity(Some(node.id), Some((verdict.instance_id, verdict.key_id)));
    match scope {
        Some(scope) if verdict.holds_all(scope.as_str()) => {}
        Some(scope) => {
            return Err(ApiError::Forbidden(format!(
                "the key lacks the scope {scope}"
            )));
        }
        None => {
            return Err(ApiError::Forbidden(
                "no route rule allows this request".to_owned(),
            ));
        }
    }
    Ok(allowed(Some(&verdict)))
}

/// 200 (exactly: Envoy takes any other status as a refusal) with the
/// caller's identity. The identity headers are always there, empty for a
/// public route: a proxy copying them upstream then overwrites any copy the
/// client sent (Caddy 2.10 to 2.11.1 and Envoy pass a client's copy on when
/// the answer lacks the header).
fn allowed(caller: Option<&Verdict>) -> Response {
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    let (instance, key, scopes) = match caller {
        Some(verdict) => (
            verdict.instance_id.to_string(),
            verdict.key_id.to_string(),
            verdict.scope_text.to_string(),
        ),
        None => Default::default(),
    };
    for (name, value) in [
        ("x-keyplane-instance", instance),
        ("x-keyplane-key-id", key),
        ("x-keyplane-scopes", scopes),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.insert(name, value);
        }
    }
    response
}

/// One revocation, as streamed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationEvent {
    /// The key that stopped working.
    pub key_id: Uuid,
    /// `revoked`, `disabled`, `rotated`, `suspended` or `decommissioned`.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Seconds a node over its stream bound is told to wait.
const STREAM_RETRY_AFTER: u64 = 5;

/// Server-Sent Events: one `revocation` event per key that stopped working,
/// with ids; reconnect with `Last-Event-ID` to get what was missed. Without
/// it the stream starts from now. Once what was missed has been sent, one
/// `ready` event (data `{}`, with the id to resume from) says the stream is
/// live: a node trusts its cached answers again only after it.
#[utoipa::path(
    get, path = "/v1/revocations/stream", operation_id = "stream_revocations", tag = "nodes",
    params(("Last-Event-ID" = Option<i64>, Header, description = "The last event id received")),
    responses(
        (status = 200, description = "text/event-stream of revocation events", body = RevocationEvent, content_type = "text/event-stream"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ("basic" = [])),
)]
pub async fn stream_revocations(
    State(state): State<AppState>,
    NodeAuth(node): NodeAuth,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ApiError> {
    // Subscribe before reading the log, so nothing falls between the two.
    let subscription = node_calls::subscribe(&state);
    let last = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::BadRequest {
                code: "invalid_last_event_id",
                detail: "Last-Event-ID must be an event id from this stream".to_owned(),
                field: Some("Last-Event-ID".to_owned()),
            })?,
        None => node_calls::latest_revocation(&state).await?,
    };
    let slot = state
        .streams
        .take(node.id)
        .ok_or(ApiError::TooManyRequests {
            retry_after: STREAM_RETRY_AFTER,
        })?;
    tracing::info!(node = %node.id, after = last, "revocation stream opened");
    let feed = node_calls::revocation_feed(&state, node.id, subscription, last);
    let stream = futures_util::StreamExt::map(feed, |item| {
        let event = match item {
            FeedItem::Revoked(row) => SseEvent::default()
                .event("revocation")
                .id(row.id.to_string())
                .json_data(RevocationEvent {
                    key_id: row.key_id,
                    reason: row.reason,
                    at: row.at,
                })
                .unwrap_or_default(),
            // Carries the cursor, so a node that has seen no revocation yet
            // can resume from here too.
            FeedItem::CaughtUp { last } => SseEvent::default()
                .event("ready")
                .id(last.to_string())
                .data("{}"),
        };
        Ok::<_, std::convert::Infallible>(event)
    });
    // Nodes reconnect (to another replica) with Last-Event-ID; shutdown need
    // not wait for them. A stream ends when its node key does, and gives
    // its slot back when it ends.
    let key_ends = (node.expires_at - state.clock.now())
        .to_std()
        .unwrap_or_default();
    let ends = futures_util::future::select(
        Box::pin(state.stopped()),
        Box::pin(tokio::time::sleep(key_ends)),
    );
    let stream = futures_util::StreamExt::take_until(stream, ends);
    let stream = futures_util::StreamExt::map(stream, move |event| {
        let _held = &slot;
        event
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
