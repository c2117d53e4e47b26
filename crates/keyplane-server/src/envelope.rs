//! What every answer goes through, as one tower service rather than a stack
//! of `from_fn` middlewares (each of which clones the service behind it and
//! boxes a future on every request): the request's id and span, the refusal
//! of a body declared too large, the problem body of error answers, the
//! echoed `X-Request-Id` and the security headers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::error::{ApiError, render_problem};
use crate::request::{REQUEST_ID_HEADER, RequestId};

/// Wraps a service in the [`Envelope`].
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeLayer {
    /// Bodies declared longer are refused (413) before they are read.
    pub body_limit: usize,
    /// Whether answers go out over TLS (HSTS is sent then).
    pub https: bool,
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope {
            inner,
            settings: *self,
        }
    }
}

/// See the module's documentation.
#[derive(Debug, Clone)]
pub struct Envelope<S> {
    inner: S,
    settings: EnvelopeLayer,
}

impl<S> Service<Request> for Envelope<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EnvelopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
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
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let answer = match declared {
            Some(length) if length > self.settings.body_limit as u64 => Answer::TooLarge,
            // Whatever the services inside do on the call itself is in
            // the span too, as what they do when polled is.
            _ => Answer::Inner {
                future: span
                    .in_scope(|| self.inner.call(request))
                    .instrument(span.clone()),
            },
        };
        EnvelopeFuture {
            answer,
            span,
            id,
            started: Instant::now(),
            https: self.settings.https,
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of an [`Envelope`], finished when it is ready.
    pub struct EnvelopeFuture<F> {
        #[pin]
        answer: Answer<F>,
        span: tracing::Span,
        id: RequestId,
        started: Instant,
        https: bool,
    }
}

pin_project_lite::pin_project! {
    #[project = AnswerProjection]
    enum Answer<F> {
        Inner { #[pin] future: Instrumented<F> },
        TooLarge,
    }
}

impl<F> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.answer.project() {
            AnswerProjection::Inner { future } => match future.poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            AnswerProjection::TooLarge => ApiError::PayloadTooLarge.into_response(),
        };
        Poll::Ready(Ok(finish(
            response,
            this.span,
            this.id,
            *this.started,
            *this.https,
        )))
    }
}

/// The problem body, the log line, the request id and the security headers.
fn finish(
    response: Response,
    span: &tracing::Span,
    id: &RequestId,
    started: Instant,
    https: bool,
) -> Response {
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
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    // No MIME sniffing, no framing, no referrer; HSTS under TLS.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}
