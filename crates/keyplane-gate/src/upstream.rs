//! The connections to the upstream: HTTP/1.1 over TCP or TLS (the
//! platform's roots), nothing between the gate and it.
//!
//! A request drives its upstream connection itself, in the task that serves
//! the client's connection: it writes the request, reads the answer's head,
//! and then the answer's body, as the client reads it, from the same task.
//! A pooled client that runs each connection in a task of its own passes a
//! request and its answer through two channels and wakes two tasks each way,
//! which showed in the latency the gate added (nginx's one thread runs both
//! sides in one pass of its event loop). A connection goes back to the pool
//! once its answer has been read to the end; one dropped earlier (the client
//! went away) is closed.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::http::header::HOST;
use axum::http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::net::TcpStream;
use tower::Service as _;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// How long a connection to the upstream may take to open (TLS included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle connection to the upstream is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are looked over: those the upstream closed
/// or kept too long are let go.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The most idle connections kept; more are closed.
const MAX_IDLE: usize = 1024;

/// The upstream, and the idle connections to it.
pub struct Upstream {
    connector: Connector,
    /// `scheme://authority`: where to connect.
    origin: Uri,
    /// The `Host` every request carries.
    host: HeaderValue,
    /// The base path, without a trailing slash ("" for none).
    base_path: String,
    idle: Arc<Pool>,
}

/// Why a request could not be passed on.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The path and query do not make a URI with the base.
    #[error("the request's path cannot be passed on")]
    Uri(#[from] axum::http::uri::InvalidUri),
    /// No connection could be opened.
    #[error("the upstream cannot be reached: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// Opening a connection took longer than [`CONNECT_TIMEOUT`].
    #[error("the upstream took longer than {CONNECT_TIMEOUT:?} to accept a connection")]
    ConnectTimeout,
    /// Writing the request or reading the answer's head failed.
    #[error("the upstream failed to answer: {0}")]
    Http(#[from] hyper::Error),
}

/// A connection: what sends on it, and what drives it. Boxed once when
/// opened (a TLS connection's state is kilobytes): requests and the pool
/// move a pointer.
struct Conn {
    send: SendRequest<Body>,
    driver: Connection<Io, Body>,
    ended: bool,
}

impl Conn {
    /// Drives the connection as far as it goes without waiting; false once
    /// it has ended (closed by the upstream, or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ended {
            self.ended = Pin::new(&mut self.driver).poll(cx).is_ready();
        }
        !self.ended
    }
}

/// Idle connections, the most recently used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<(Box<Conn>, Instant)>>,
}

impl Pool {
    fn take(&self) -> Option<Box<Conn>> {
        loop {
            let (conn, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
    }

    fn put(&self, conn: Box<Conn>) {
        if conn.ended || conn.send.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push((conn, Instant::now()));
        }
    }

    /// Lets go of connections the upstream closed or kept idle too long.
    /// Each is driven once with a waker that does nothing: whoever takes it
    /// next drives it with its own.
    fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain_mut(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && conn.drive(&mut cx));
        }
    }
}

impl Upstream {
    /// A client for `base` (`http://` or `https://`, with any base path).
    /// Must be called within the runtime: it starts the idle sweep.
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
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);

        let base: Uri = base
            .trim_end_matches('/')
            .parse()
            .context("the upstream's URL")?;
        let (Some(scheme), Some(authority)) = (base.scheme(), base.authority()) else {
            anyhow::bail!("the upstream's URL must be absolute");
        };
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .context("the upstream's URL")?;
        let host = HeaderValue::from_str(authority.as_str()).context("the upstream's host")?;
        let idle = Arc::new(Pool::default());
        tokio::spawn(sweep(Arc::downgrade(&idle)));
        Ok(Upstream {
            connector,
            origin,
            host,
            base_path: base.path().trim_end_matches('/').to_owned(),
            idle,
        })
    }

    /// The upstream's URI (origin-form: the base path, then the request's)
    /// for a request's `path_and_query`.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, SendError> {
        let mut uri = String::with_capacity(self.base_path.len() + path_and_query.len());
        uri.push_str(&self.base_path);
        uri.push_str(path_and_query);
        Ok(Uri::try_from(uri)?)
    }

    /// Sends `request` (its URI made by [`Upstream::uri`]); answers once
    /// the upstream's head has arrived, the body to be read as it comes. A
    /// request an idle connection could not take (the upstream had just
    /// closed it) is sent again on a new one; one already written is not.
    pub async fn send(&self, mut request: Request<Body>) -> Result<Response<Answer>, SendError> {
        request.headers_mut().insert(HOST, self.host.clone());
        loop {
            let (mut conn, reused) = match self.ready_idle().await {
                Some(conn) => (conn, true),
                // Boxed: connecting (TLS included) is a large future, and
                // rare; every request's future would carry it otherwise.
                None => (Box::pin(self.connect()).await?, false),
            };
            let answer = conn.send.try_send_request(request);
            match drive_until(&mut conn, answer).await {
                Ok(response) => {
                    return Ok(response.map(|body| Answer {
                        body,
                        conn: Some(conn),
                        pool: Arc::downgrade(&self.idle),
                        ended: false,
                    }));
                }
                Err(mut refused) => match refused.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(refused.into_error().into()),
                },
            }
        }
    }

    /// An idle connection ready for a request, if there is one.
    async fn ready_idle(&self) -> Option<Box<Conn>> {
        loop {
            let mut conn = self.idle.take()?;
            let ready = poll_fn(|cx| {
                Poll::Ready(
                    conn.drive(cx) && matches!(conn.send.poll_ready(cx), Poll::Ready(Ok(()))),
                )
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let connecting = self.connector.clone().call(self.origin.clone());
        let io = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(io)) => io,
            Ok(Err(err)) => return Err(SendError::Connect(err)),
            Err(_) => return Err(SendError::ConnectTimeout),
        };
        let (send, driver) = hyper::client::conn::http1::handshake(io).await?;
        Ok(Box::new(Conn {
            send,
            driver,
            ended: false,
        }))
    }
}

/// Drives `conn` (while it lasts) alongside `future`, until `future` is
/// done. A connection that ended has given whatever waited on it its answer.
async fn drive_until<F: Future>(conn: &mut Conn, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    poll_fn(|cx| {
        conn.drive(cx);
        future.as_mut().poll(cx)
    })
    .await
}

async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep();
    }
}

/// An answer's body, read from its connection by whoever reads the body;
/// the connection goes back to the pool once the body has been read whole.
pub struct Answer {
    body: Incoming,
    /// None once the answer failed.
    conn: Option<Box<Conn>>,
    pool: Weak<Pool>,
    ended: bool,
}

impl Answer {
    fn seen(
        &mut self,
        frame: Option<Result<Frame<Bytes>, hyper::Error>>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &frame {
            Some(Ok(_)) => self.ended = self.body.is_end_stream(),
            Some(Err(_)) => self.conn = None,
            None => self.ended = true,
        }
        Poll::Ready(frame)
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return this.seen(frame);
        }
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        this.seen(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !(self.ended || self.body.is_end_stream()) {
            // Read in part: the rest would come before the next answer.
            return;
        }
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.put(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// How the test upstream answers each request.
    #[derive(Clone, Copy)]
    enum Answering {
        /// `hello`, keeping the connection.
        Hello,
        /// `hello`, then closes the connection without saying so.
        HelloThenClose,
        /// The first chunk of a chunked answer, and then nothing.
        FirstChunkOnly,
    }

    /// An HTTP/1.1 upstream written by hand: it counts connections and
    /// hands each request's head to the test.
    async fn upstream(
        answering: Answering,
    ) -> (String, Arc<AtomicUsize>, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/base/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (heads, received) = mpsc::unbounded_channel();
        let counting = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counting.fetch_add(1, Ordering::SeqCst);
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => read.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        };
                        let head: Vec<u8> = read.drain(..end + 4).collect();
                        let _ = heads.send(String::from_utf8(head).unwrap());
                        let answer: &[u8] = match answering {
                            Answering::Hello | Answering::HelloThenClose => {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
                            }
                            Answering::FirstChunkOnly => {
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
                            }
                        };
                        stream.write_all(answer).await.unwrap();
                        match answering {
                            Answering::Hello => {}
                            Answering::HelloThenClose => {
                                drop(stream);
                                let _ = heads.send("closed".to_owned());
                                return;
                            }
                            Answering::FirstChunkOnly => {
                                // Holds the connection open, saying no more.
                                let _ = stream.read(&mut buf).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (base, accepted, received)
    }

    fn get(upstream: &Upstream, path: &str) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = upstream.uri(path).unwrap();
        request
    }

    async fn hello(upstream: &Upstream) -> Bytes {
        let answer = upstream
            .send(get(upstream, "/v1/models?x=1"))
            .await
            .unwrap();
        answer.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        let (base, accepted, mut heads) = upstream(Answering::Hello).await;
        let upstream = Upstream::new(&base).unwrap();
        for _ in 0..3 {
            assert_eq!(hello(&upstream).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with("GET /base/v1/models?x=1 HTTP/1.1\r\n"),
            "{head}"
        );
        let authority = base
            .trim_start_matches("http://")
            .trim_end_matches("/base/");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("\r\nhost: {authority}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_never_used_again() {
        let (base, accepted, mut heads) = upstream(Answering::HelloThenClose).await;
        let upstream = Upstream::new(&base).unwrap();
        assert_eq!(hello(&upstream).await, "hello");
        heads.recv().await.unwrap();
        // The upstream has closed the connection (and this side's kernel has
        // its FIN) before the next request takes it from the pool.
        assert_eq!(heads.recv().await.unwrap(), "closed");
        assert_eq!(hello(&upstream).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_takes_its_connection_with_it() {
        let (base, accepted, _heads) = upstream(Answering::FirstChunkOnly).await;
        let upstream = Upstream::new(&base).unwrap();
        let mut body = upstream
            .send(get(&upstream, "/v1/chat/completions"))
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        drop(body);
        assert!(upstream.idle.idle.lock().unwrap().is_empty());
        let _second = upstream
            .send(get(&upstream, "/v1/chat/completions"))
            .await
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
