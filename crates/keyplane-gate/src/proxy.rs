//! The gate's request path: check the key, strip it, forward, stream back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use futures_util::StreamExt;
use keyplane_client::{KeyplaneLayer, openai_error};
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

/// What every request needs.
pub struct Gate {
    /// Checks keys; None when auth is disabled (dev, loopback).
    pub guard: Option<KeyplaneLayer>,
    /// Forwards to the upstream.
    pub http: reqwest::Client,
    /// The upstream's base URL.
    pub upstream: String,
    /// The upstream's own key, sent instead of the client's.
    pub upstream_key: Option<SecretString>,
    /// The body cap.
    pub max_body: u64,
    /// The longest the upstream may take to start answering.
    pub request_timeout: std::time::Duration,
    /// Places for requests passed upstream; a streamed answer holds its
    /// place until it ends.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Requests passed upstream and refused here.
    pub forwarded: AtomicU64,
    /// Requests refused here.
    pub refused: AtomicU64,
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The headers worth passing on: no hop-by-hop ones, none the connection
/// header names, and none in `drop`.
fn forwardable(headers: &HeaderMap, drop: &[HeaderName]) -> HeaderMap {
    let named_by_connection: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name_text = name.as_str();
        let skip = HOP_BY_HOP.contains(&name_text)
            || named_by_connection.iter().any(|n| n == name_text)
            || drop.contains(name);
        if !skip {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn too_large(max: u64) -> Response<Body> {
    openai_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        &format!("The request body is larger than this gate accepts ({max} bytes)."),
    )
}

/// Every route but the gate's own: checked, then forwarded, in a span that
/// joins the caller's trace and carries it to keyplane and the upstream.
pub async fn forward(
    State(gate): State<Arc<Gate>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response<Body> {
    let span = tracing::info_span!(
        "gate request",
        method = %request.method(),
        path = %keyplane_domain::scrub_keys(request.uri().path()),
        status = tracing::field::Empty,
        instance_id = tracing::field::Empty,
        key_id = tracing::field::Empty,
    );
    keyplane_telemetry::set_parent_from(&span, request.headers());
    let response = forward_in_span(gate, peer, request)
        .instrument(span.clone())
        .await;
    span.record("status", response.status().as_u16());
    response
}

/// Whether `host` (a Host header) names this machine's loopback: with auth
/// disabled, a page elsewhere must not reach the gate through a DNS name
/// rebound to 127.0.0.1.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn forward_in_span(gate: Arc<Gate>, peer: SocketAddr, request: Request) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let Ok(place) = gate.in_flight.clone().try_acquire_owned() else {
        let mut busy = openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "gate_busy",
            "This gate is serving as many requests as it may; try again shortly.",
        );
        busy.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return busy;
    };
    if gate.guard.is_none() {
        let host = parts
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or(parts.uri.authority().map(|a| a.as_str()));
        if !host.is_some_and(is_loopback_host) {
            return openai_error(
                StatusCode::MISDIRECTED_REQUEST,
                "invalid_request_error",
                "host_not_allowed",
                "With auth disabled, this gate answers only requests for localhost.",
            );
        }
    }
    let caller = match &gate.guard {
        Some(guard) => {
            let decision = guard
                .authorize(
                    parts.method.as_str(),
                    parts.uri.path(),
                    &parts.headers,
                    Some(peer.ip()),
                )
                .await;
            match decision {
                Ok(caller) => caller,
                Err(refusal) => {
                    gate.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(method = %parts.method, path = %keyplane_domain::scrub_keys(parts.uri.path()),
                        reason = %refusal, "refused");
                    return refusal.to_response();
                }
            }
        }
        None => None,
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > gate.max_body) {
        return too_large(gate.max_body);
    }

    // The client's key, and any X-Keyplane-* header it tried to forge (the
    // upstream trusts those: identity, scopes), stop here.
    let mut headers = forwardable(&parts.headers, &[AUTHORIZATION, HOST]);
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-keyplane-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
    if let Some(key) = &gate.upstream_key
        && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
    {
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    if let Some(caller) = &caller {
        let span = tracing::Span::current();
        span.record("instance_id", tracing::field::display(caller.instance_id));
        span.record("key_id", tracing::field::display(caller.key_id));
        for (name, value) in [
            ("x-keyplane-instance", caller.instance_id.to_string()),
            ("x-keyplane-key-id", caller.key_id.to_string()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    // The upstream joins the trace too (a caller's traceparent passes as is
    // when spans are not exported).
    keyplane_telemetry::inject_current(&mut headers);

    // The body streams through, counted against the cap as it goes.
    let over_cap = Arc::new(AtomicBool::new(false));
    let max_body = gate.max_body;
    let mut seen = 0u64;
    let body = body.into_data_stream().map({
        let over_cap = over_cap.clone();
        move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > max_body {
                over_cap.store(true, Ordering::Relaxed);
                return Err(axum::Error::new("request body over the cap"));
            }
            Ok(chunk)
        }
    });
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let upstream = gate
        .http
        .request(parts.method, format!("{}{path}", gate.upstream))
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let upstream = match tokio::time::timeout(gate.request_timeout, upstream).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(_)) if over_cap.load(Ordering::Relaxed) => return too_large(gate.max_body),
        Err(_) => {
            tracing::warn!("the upstream did not start answering in time");
            return openai_error(
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "upstream_timeout",
                "The inference server behind this gate did not answer in time.",
            );
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err.without_url(), "the upstream cannot be reached");
            return openai_error(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_unavailable",
                "The inference server behind this gate cannot be reached.",
            );
        }
    };
    gate.forwarded.fetch_add(1, Ordering::Relaxed);

    // The answer streams back chunk by chunk as the upstream sends it (SSE).
    let status = upstream.status();
    let headers = forwardable(upstream.headers(), &[]);
    // The answer holds its place until its last chunk has gone.
    let stream = upstream.bytes_stream().map(move |chunk| {
        let _place = &place;
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for host in [
            "localhost",
            "localhost:8090",
            "127.0.0.1:8090",
            "[::1]:8090",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8090",
            "10.0.0.1",
            "[2001:db8::1]:80",
            "",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
