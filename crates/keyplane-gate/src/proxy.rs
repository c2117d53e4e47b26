//! The gate's request path: check the key, strip it, forward, stream back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use futures_util::StreamExt;
use http_body::{Body as _, Frame, SizeHint};
use keyplane_client::{
    Admission, BudgetRefusal, Budgets, Charge, Identity, KeyplaneLayer, Limiter, UsageRecorder,
    Used, openai_error, window_headers,
};
use keyplane_domain::Limits;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::metering::{self, Meter};
use crate::upstream::{Answer, Upstream};

/// What every request needs.
pub struct Gate {
    /// Checks keys; None when auth is disabled (dev, loopback).
    pub guard: Option<KeyplaneLayer>,
    /// The upstream, and the connections to it.
    pub upstream: Upstream,
    /// `Bearer <the upstream's own key>`, sent instead of the client's.
    pub upstream_authorization: Option<HeaderValue>,
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
    /// Keys' requests and tokens per minute.
    pub limiter: Limiter,
    /// Usage counted and reported, and budgets leased (None: auth disabled).
    pub metering: Option<Metering>,
}

/// Usage reports and budget leases, both with keyplane.
pub struct Metering {
    /// Counts usage and reports it in batches.
    pub usage: UsageRecorder,
    /// Leases of keys' daily and monthly token budgets.
    pub budgets: Budgets,
}

/// A request let through a key's limits: what to settle once the upstream
/// has said what it used.
struct Metered {
    key_id: uuid::Uuid,
    limits: Limits,
    admission: Admission,
    /// What the request was charged of the key's budgets.
    charge: Charge,
    /// The model it named ('' for none).
    model: String,
    /// Whether the gate asked for `usage` in a stream on the client's behalf.
    strip_usage: bool,
    /// Whether it was an inference request (its answer may say what it used).
    inference: bool,
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

/// Takes out of `headers` the ones that describe one hop, and any the
/// Connection header names; what is left is worth passing on. Nothing is
/// copied, and a map with none of them is only looked at.
fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named_by_connection {
        headers.remove(name);
    }
    if headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// An upstream's answer, holding its place among the requests in flight
/// until its last frame has gone (or the client has gone).
struct Held {
    body: Answer,
    _place: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
    let (mut parts, body) = request.into_parts();
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

    // A key's limits and models are checked before the upstream sees anything.
    let (body, metered) = match &caller {
        Some(identity) => match limit(&gate, identity, &parts, body).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                gate.refused.fetch_add(1, Ordering::Relaxed);
                return refusal;
            }
        },
        None => (Unread(body), None),
    };

    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    // The client's key, and any X-Keyplane-* header it tried to forge (the
    // upstream trusts those: identity, scopes), stop here.
    let mut headers = std::mem::take(&mut parts.headers);
    drop_hop_by_hop(&mut headers);
    headers.remove(AUTHORIZATION);
    headers.remove(HOST);
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("x-keyplane-"))
    {
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-keyplane-"))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(name);
        }
    }
    if let Some(authorization) = &gate.upstream_authorization {
        headers.insert(AUTHORIZATION, authorization.clone());
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
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    // The upstream joins the trace too (a caller's traceparent passes as is
    // when spans are not exported).
    keyplane_telemetry::inject_current(&mut headers);

    // A body not read yet streams through, counted against the cap as it goes.
    let over_cap = Arc::new(AtomicBool::new(false));
    let body = match body {
        Read(bytes) => {
            // Its length is its own (it may have been rewritten).
            headers.remove(CONTENT_LENGTH);
            Body::from(bytes)
        }
        Unread(body) if body.is_end_stream() => Body::empty(),
        Unread(body) => {
            let max_body = gate.max_body;
            let mut seen = 0u64;
            let over_cap = over_cap.clone();
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let chunk = chunk?;
                seen += chunk.len() as u64;
                if seen > max_body {
                    over_cap.store(true, Ordering::Relaxed);
                    return Err(axum::Error::new("request body over the cap"));
                }
                Ok(chunk)
            }))
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match gate.upstream.uri(path) {
        Ok(uri) => uri,
        Err(_) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_path",
                "The request's path cannot be passed to the inference server.",
            );
        }
    };
    let mut request = axum::http::Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let upstream = gate.upstream.send(request);
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
            tracing::warn!(error = %err, cause = ?std::error::Error::source(&err), "the upstream cannot be reached");
            return openai_error(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_unavailable",
                "The inference server behind this gate cannot be reached.",
            );
        }
    };
    gate.forwarded.fetch_add(1, Ordering::Relaxed);

    // The answer streams back frame by frame as the upstream sends it (SSE).
    let (head, incoming) = upstream.into_parts();
    let (status, mut headers) = (head.status, head.headers);
    drop_hop_by_hop(&mut headers);
    let events = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = match metered {
        // An answer that cannot say what it used (a model list, a file) is
        // settled now and streams through untouched.
        Some(metered) if !metered.inference => {
            settle(&gate, metered, status.is_success(), None);
            Body::new(Held {
                body: incoming,
                _place: place,
            })
        }
        Some(metered) => {
            window_headers(
                &mut headers,
                metered.admission.requests,
                metered.admission.tokens,
            );
            // Taking the usage event the gate asked for out of a stream
            // changes its length.
            if metered.strip_usage && events {
                headers.remove(CONTENT_LENGTH);
            }
            let meter = settle_when_done(&gate, metered, status.is_success(), events);
            // The answer holds its place until its last chunk has gone.
            let stream = Body::new(incoming).into_data_stream().map(move |chunk| {
                let _place = &place;
                chunk
            });
            Body::from_stream(metered_stream(stream, meter))
        }
        None => Body::new(Held {
            body: incoming,
            _place: place,
        }),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A request body: read whole (to check the model and count tokens), or
/// not read at all.
enum RequestBody {
    Read(Bytes),
    Unread(Body),
}
use RequestBody::{Read, Unread};

/// Holds a request of `identity` to its limits: the model it names must be
/// allowed, its requests and tokens per minute within bounds, and its
/// budgets not spent (an inference request's body is read for all three,
/// and for the usage report). Answers the body to forward and what to
/// settle later, or the refusal.
async fn limit(
    gate: &Gate,
    identity: &Identity,
    parts: &Parts,
    body: Body,
) -> Result<(RequestBody, Option<Metered>), Response<Body>> {
    let (body, inference) = match metering::is_inference(&parts.method, parts.uri.path()) {
        true => {
            let bytes = read_whole(body, gate.max_body).await?;
            match metering::read_request(bytes.clone()) {
                Some(inference) => (Read(inference.body.clone()), Some(inference)),
                None => (Read(bytes), None),
            }
        }
        false => (Unread(body), None),
    };
    if let Some(models) = &identity.models {
        let model = inference.as_ref().and_then(|i| i.model.as_deref());
        if !model.is_some_and(|model| models.allows(model)) {
            let message = match model {
                Some(model) => format!("This API key may not use the model {model}."),
                None => {
                    "This API key may use only some models, and the request names none.".to_owned()
                }
            };
            return Err(openai_error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_allowed",
                &message,
            ));
        }
    }
    let estimate = inference.as_ref().map_or(0, |i| i.estimate);
    let (key_id, limits) = (identity.key_id, &identity.limits);
    let admission = gate
        .limiter
        .admit(key_id, limits, estimate)
        .map_err(|limited| {
            tracing::info!(%key_id, exceeded = ?limited.exceeded, "rate limited");
            limited.to_response()
        })?;
    let charge = match &gate.metering {
        Some(metering) => match metering.budgets.charge(key_id, limits, estimate).await {
            Ok(charge) => charge,
            Err(refusal) => {
                gate.limiter.settle(key_id, limits, admission.charged, 0);
                tracing::info!(%key_id, reason = %refusal, "budget refused");
                return Err(budget_refused(refusal));
            }
        },
        None => Charge::default(),
    };
    let (model, strip_usage) = match &inference {
        Some(inference) => (
            inference.model.clone().unwrap_or_default(),
            inference.strip_usage,
        ),
        None => (String::new(), false),
    };
    let metered = Metered {
        key_id,
        limits: identity.limits,
        admission,
        charge,
        model,
        strip_usage,
        inference: inference.is_some(),
    };
    Ok((body, Some(metered)))
}

/// OpenAI's answer for a spent budget: 429 `insufficient_quota`, which
/// clients must not retry (`x-should-retry: false`); or, when keyplane
/// cannot be asked, 503 (fail closed).
fn budget_refused(refusal: BudgetRefusal) -> Response<Body> {
    match refusal {
        BudgetRefusal::Spent => {
            let mut response = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "insufficient_quota",
                "This API key's token budget is spent (or what is left is less than this request \
                 may use); it renews at the start of the next UTC day or month.",
            );
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
            response
        }
        BudgetRefusal::Unavailable => keyplane_client::Refusal::Unavailable.to_response(),
    }
}

/// The whole body, at most `max` bytes.
async fn read_whole(body: Body, max: u64) -> Result<Bytes, Response<Body>> {
    let mut stream = body.into_data_stream();
    let mut whole = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_body",
                "The request body could not be read.",
            )
        })?;
        if (whole.len() + chunk.len()) as u64 > max {
            return Err(too_large(max));
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(whole))
}

/// A meter that, once the answer is done, settles what the request was
/// charged against what it used (nothing, when the upstream refused it; the
/// estimate, when the upstream did not say), and counts it for the usage
/// report.
fn settle_when_done(gate: &Gate, metered: Metered, succeeded: bool, events: bool) -> Meter {
    let (limiter, metering) = settlers(gate);
    Meter::new(events, metered.strip_usage, move |usage| {
        settle_with(&limiter, metering, metered, succeeded, usage);
    })
}

/// Settles a request now, with what its answer said it used (if anything).
fn settle(gate: &Gate, metered: Metered, succeeded: bool, usage: Option<metering::Usage>) {
    let (limiter, metering) = settlers(gate);
    settle_with(&limiter, metering, metered, succeeded, usage);
}

/// What settling needs: the limiter, and usage and budgets (with keyplane).
fn settlers(gate: &Gate) -> (Limiter, Option<(UsageRecorder, Budgets)>) {
    let metering = gate
        .metering
        .as_ref()
        .map(|m| (m.usage.clone(), m.budgets.clone()));
    (gate.limiter.clone(), metering)
}

fn settle_with(
    limiter: &Limiter,
    metering: Option<(UsageRecorder, Budgets)>,
    metered: Metered,
    succeeded: bool,
    usage: Option<metering::Usage>,
) {
    let charged = metered.admission.charged;
    let used = match (succeeded, usage) {
        (false, _) => 0,
        (true, Some(usage)) => usage.total(),
        (true, None) => charged,
    };
    limiter.settle(metered.key_id, &metered.limits, charged, used);
    let Some((recorder, budgets)) = metering else {
        return;
    };
    let usage = usage.unwrap_or_default();
    recorder.record(
        metered.key_id,
        &metered.model,
        Used {
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
            error: !succeeded,
        },
    );
    if metered.charge != Charge::default() {
        let budget_used = match (succeeded, usage.total()) {
            (false, _) => Some(0),
            (true, 0) => None,
            (true, total) => Some(total),
        };
        tokio::spawn(async move {
            budgets
                .settle(metered.key_id, metered.charge, budget_used)
                .await;
        });
    }
}

/// `stream` read through `meter`, with what it holds back sent at the end.
fn metered_stream<S>(
    stream: S,
    meter: Meter,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    futures_util::stream::unfold(Some((stream, meter)), |state| async move {
        let (mut stream, mut meter) = state?;
        match stream.next().await {
            Some(Ok(chunk)) => {
                let out = meter.feed(chunk);
                Some((Ok(out), Some((stream, meter))))
            }
            Some(Err(err)) => Some((Err(err), None)),
            None => {
                let rest = meter.finish();
                Some((Ok(rest), None))
            }
        }
    })
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(bytes) if bytes.is_empty())))
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
