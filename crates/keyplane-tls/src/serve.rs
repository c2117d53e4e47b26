//! Serving a router on a TCP listener, plain or TLS, with what `axum::serve`
//! lacks:
//!
//! - a bound on open connections (handshakes in progress count): past it,
//!   new ones wait in the kernel's backlog rather than cost a task each;
//! - `TCP_NODELAY` on every connection, so that streamed events go out as
//!   they are written;
//! - a deadline for a connection's first request, whatever the protocol: a
//!   client that sends nothing, stalls its TLS handshake, or opens HTTP/2 and
//!   asks for nothing is closed once `header_timeout` has passed (hyper's own
//!   header timeout only starts once it has recognised HTTP/1);
//! - an idle deadline: a connection with no request in flight (a response
//!   still streaming counts as in flight) is closed after `idle_timeout`,
//!   for HTTP/1 keep-alive and HTTP/2 alike;
//! - shutdown that stops accepting and waits for the requests in flight;
//! - an HTTP/1 connection kept for the next request after an answer given
//!   without reading the request's body (a refusal on the headers alone):
//!   what is left of a small body is read first, briefly. hyper would
//!   close the connection unless the body had already arrived, without
//!   saying so, and a client could send its next request on the closing
//!   connection and see it dropped unanswered; when the body is too large
//!   or too slow, the answer says `Connection: close`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Version};
use axum::response::Response;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use crate::{Certificates, ClientCertificate};

/// How long connections may take, and how many may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accepting a connection to its first request's headers (the TLS
    /// handshake included), and for each later request's headers.
    pub header_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Serves `app` (a [`Router`], or any service that answers as one does) on
/// `listener` (over TLS with `tls`) until `shutdown` completes, then stops
/// accepting and waits for the open connections to finish their requests.
/// Handlers see the peer as `ConnectInfo<SocketAddr>`, and a verified client
/// certificate as `Arc<ClientCertificate>`.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<Arc<Certificates>>,
    app: S,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // At the bound, stop accepting: the kernel's backlog holds the rest.
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Each write goes out at once: a streamed event (a revocation to a
        // node, a token to a chat client) must not wait, under Nagle's
        // algorithm, for the peer to acknowledge the one before it.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        let connection = Connection {
            app: app.clone(),
            peer,
            limits,
            watcher: graceful.watcher(),
            _permit: permit,
        };
        let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(tls.current()));
        tokio::spawn(connection.run(tcp, acceptor));
    }
    // New connections are refused from now on; the open ones finish.
    drop(listener);
    graceful.shutdown().await;
}

/// One accepted connection, holding its place under the bound until it ends.
struct Connection<S> {
    app: S,
    peer: SocketAddr,
    limits: ConnectionLimits,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
}

impl<S> Connection<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    async fn run(self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        let activity = Arc::new(Activity::default());
        let deadlines = activity.clone().deadlines(self.limits);
        let peer = self.peer;
        let serve = async {
            match tls {
                None => self.http(tcp, None, activity).await,
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|der| ClientCertificate::from_der(der))
                            .map(Arc::new);
                        self.http(stream, certificate, activity).await;
                    }
                    // Plain HTTP on the TLS port, scanners: drop quietly.
                    Err(err) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                },
            }
        };
        tokio::select! {
            () = serve => {}
            () = deadlines => tracing::debug!(%peer, "closing a connection that asked for nothing in time"),
        }
    }

    async fn http<IO>(
        self,
        io: IO,
        certificate: Option<Arc<ClientCertificate>>,
        activity: Arc<Activity>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, peer) = (self.app, self.peer);
        let service = tower::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(certificate) = &certificate {
                request.extensions_mut().insert(certificate.clone());
            }
            let app = app.clone();
            let in_flight = activity.begin();
            let (request, left) = watch_body(request);
            async move {
                let mut response = app.oneshot(request).await?;
                if let Some(left) = left
                    && !left.read_after_answer().await
                {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                // In flight until its body has been sent (or dropped).
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            }
        });
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            // Peers that vanish without closing are found by their silence.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        if let Err(err) = self.watcher.watch(connection).await {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }
}

/// The most of a request's body read after its answer to keep the connection.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The longest an answer waits for the rest of its request's body.
const DRAIN_WAIT: Duration = Duration::from_millis(100);

/// The request with its body as the router takes it, and, for an HTTP/1
/// request with a body, what the router leaves of that body.
fn watch_body(request: Request<Incoming>) -> (Request, Option<Arc<Left>>) {
    let http1 = matches!(
        request.version(),
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    if !http1 || request.body().is_end_stream() {
        return (request.map(Body::new), None);
    }
    let left = Arc::new(Left::default());
    let request = request.map(|body| {
        Body::new(Watched {
            body: Some(body),
            left: left.clone(),
        })
    });
    (request, Some(left))
}

/// What the router left of a request's body.
#[derive(Default)]
struct Left {
    /// Read to its end.
    read: AtomicBool,
    /// Dropped before its end.
    unread: Mutex<Option<Incoming>>,
}

impl Left {
    /// Whether the connection may serve another request once the answer is
    /// out: the body was read to its end, by the router or now.
    async fn read_after_answer(&self) -> bool {
        if self.read.load(Ordering::Acquire) {
            return true;
        }
        let unread = self.unread.lock().ok().and_then(|mut unread| unread.take());
        // Still held elsewhere (a proxied body still on its way upstream
        // when the upstream answered): the connection ends with this answer.
        let Some(mut body) = unread else {
            return false;
        };
        if body
            .size_hint()
            .exact()
            .is_some_and(|length| length > DRAIN_LIMIT as u64)
        {
            return false;
        }
        let drain = async {
            let mut seen = 0;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let Ok(frame) = frame else { return false };
                seen += frame.data_ref().map_or(0, |data| data.len());
                if seen > DRAIN_LIMIT {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(DRAIN_WAIT, drain)
            .await
            .unwrap_or(false)
    }
}

/// A request body that tells [`Left`] how it ended.
struct Watched {
    body: Option<Incoming>,
    left: Arc<Left>,
}

impl http_body::Body for Watched {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(&mut *body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || body.is_end_stream() {
            self.left.read.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            |body| body.size_hint(),
        )
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.left.read.load(Ordering::Acquire) {
            return;
        }
        if let (Some(body), Ok(mut unread)) = (self.body.take(), self.left.unread.lock()) {
            *unread = Some(body);
        }
    }
}

/// What a connection has asked for, for its deadlines.
#[derive(Debug)]
struct Activity {
    /// When it was accepted.
    born: Instant,
    /// Requests begun.
    requests: AtomicU64,
    /// Requests whose response has not been sent yet.
    in_flight: AtomicUsize,
    /// When a request last ended, in milliseconds after `born`.
    last_end: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            born: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
        }
    }
}

/// A request in flight; ends when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_end.store(now, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Acquire);
        InFlight(self.clone())
    }

    /// Completes when the connection has had no request in flight for too
    /// long: `header_timeout` from its start until it asks for something,
    /// `idle_timeout` after each request after that.
    async fn deadlines(self: Arc<Self>, limits: ConnectionLimits) {
        loop {
            let (since, limit) = match self.requests.load(Ordering::Relaxed) {
                0 => (Duration::ZERO, limits.header_timeout),
                _ => (
                    Duration::from_millis(self.last_end.load(Ordering::Relaxed)),
                    limits.idle_timeout,
                ),
            };
            let due = since + limit;
            let elapsed = self.born.elapsed();
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            if !busy && elapsed >= due {
                return;
            }
            // A busy connection (a stream may last hours) is looked at again
            // an idle period later, not every moment.
            let wait = match busy {
                true => limit,
                false => due - elapsed,
            };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

/// A response body that keeps its request in flight until it is done.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a route that refuses without reading the body, and one that
    /// echoes it.
    async fn server() -> SocketAddr {
        let app = Router::new()
            .route("/refuse", post(|| async { StatusCode::UNAUTHORIZED }))
            .route("/echo", post(|body: String| async move { body }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = ConnectionLimits::default();
        tokio::spawn(serve(listener, None, app, limits, std::future::pending()));
        address
    }

    fn post_head(path: &str, length: usize) -> String {
        format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {length}\r\n\r\n")
    }

    /// Reads one answer: its head (lowercased) and its body.
    async fn answer(tcp: &mut TcpStream) -> (String, String) {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = tcp.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the connection closed before an answer");
            seen.extend_from_slice(&buffer[..n]);
        };
        let head = String::from_utf8_lossy(&seen[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map_or(0, |value| value.trim().parse().unwrap());
        while seen.len() < head_end + length {
            let n = tcp.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the connection closed within an answer");
            seen.extend_from_slice(&buffer[..n]);
        }
        let body = String::from_utf8_lossy(&seen[head_end..head_end + length]).into_owned();
        (head, body)
    }

    async fn closes(tcp: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer));
        matches!(read.await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn a_refusal_whose_body_came_with_it_keeps_the_connection() {
        let mut tcp = TcpStream::connect(server().await).await.unwrap();
        let request = format!("{}hello", post_head("/refuse", 5));
        tcp.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = answer(&mut tcp).await;
        assert!(head.starts_with("http/1.1 401"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");

        let request = format!("{}again", post_head("/echo", 5));
        tcp.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = answer(&mut tcp).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "again");
    }

    #[tokio::test]
    async fn a_refusal_before_its_body_arrives_says_the_connection_closes() {
        let mut tcp = TcpStream::connect(server().await).await.unwrap();
        // The body is announced and never sent.
        tcp.write_all(post_head("/refuse", 5).as_bytes())
            .await
            .unwrap();
        let (head, _) = answer(&mut tcp).await;
        assert!(head.starts_with("http/1.1 401"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(closes(&mut tcp).await, "the connection stayed open");
    }

    #[tokio::test]
    async fn a_refusal_of_a_large_body_does_not_read_it() {
        let mut tcp = TcpStream::connect(server().await).await.unwrap();
        let length = DRAIN_LIMIT + 1;
        let request = format!("{}{}", post_head("/refuse", length), "x".repeat(length));
        tcp.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = answer(&mut tcp).await;
        assert!(head.contains("connection: close"), "{head}");
        assert!(closes(&mut tcp).await, "the connection stayed open");
    }

    #[tokio::test]
    async fn a_body_the_route_reads_keeps_the_connection() {
        let mut tcp = TcpStream::connect(server().await).await.unwrap();
        for word in ["one", "two"] {
            let request = format!("{}{word}", post_head("/echo", word.len()));
            tcp.write_all(request.as_bytes()).await.unwrap();
            let (head, body) = answer(&mut tcp).await;
            assert!(!head.contains("connection: close"), "{head}");
            assert_eq!(body, word);
        }
    }
}
