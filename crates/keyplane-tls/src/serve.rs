//! Serving a router on a TCP listener, plain or TLS, with what `axum::serve`
//! lacks:
//!
//! - a bound on open connections (handshakes in progress count): past it,
//!   new ones wait in the kernel's backlog rather than cost a task each;
//! - a deadline for a connection's first request, whatever the protocol: a
//!   client that sends nothing, stalls its TLS handshake, or opens HTTP/2 and
//!   asks for nothing is closed once `header_timeout` has passed (hyper's own
//!   header timeout only starts once it has recognised HTTP/1);
//! - an idle deadline: a connection with no request in flight (a response
//!   still streaming counts as in flight) is closed after `idle_timeout`,
//!   for HTTP/1 keep-alive and HTTP/2 alike;
//! - shutdown that stops accepting and waits for the requests in flight.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

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

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`
/// completes, then stops accepting and waits for the open connections to
/// finish their requests. Handlers see the peer as `ConnectInfo<SocketAddr>`,
/// and a verified client certificate as `Arc<ClientCertificate>`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Certificates>>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
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
struct Connection {
    app: Router,
    peer: SocketAddr,
    limits: ConnectionLimits,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
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
        let service = tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(certificate) = &certificate {
                request.extensions_mut().insert(certificate.clone());
            }
            let app = app.clone();
            let in_flight = activity.begin();
            async move {
                let response = app.oneshot(request.map(Body::new)).await?;
                // In flight until its body has been sent (or dropped).
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
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
