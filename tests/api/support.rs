//! Starting servers, databases and a link to the database that can fail.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyplane_server::{App, Settings};
use keyplane_store::{DatabaseLocation, PoolSettings};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The admin URL of the PostgreSQL the tests may create databases on.
pub fn admin_url() -> String {
    std::env::var("KEYPLANE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "KEYPLANE_TEST_DATABASE_URL is not set: run the tests with scripts/test, \
             which starts a throwaway PostgreSQL, or point it at one you own"
        )
    })
}

/// Creates an empty database and answers its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("keyplane_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect as admin");
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    with_database(&admin, &name)
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Settings for a test server on port 0 against `database_url`.
pub fn settings_for(database_url: &str) -> Settings {
    Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: DatabaseLocation::Url(SecretString::from(database_url.to_owned())),
        pool: PoolSettings {
            max_connections: 5,
            acquire_timeout: Duration::from_secs(2),
            startup_wait: Duration::from_secs(5),
        },
        master_key: Some(SecretString::from(MASTER_KEY.to_owned())),
        // Tests make hundreds of refused requests from one address on
        // purpose; the rate limits have their own test (abuse.rs).
        limits: keyplane_server::limits::LimitSettings {
            auth_failures_per_minute: 1_000_000,
            credential_failures_per_minute: 1_000_000,
            misses_per_node_per_second: 1_000_000,
            misses_per_address_per_second: 1_000_000,
            operator_per_minute: 1_000_000,
            node_per_second: 1_000_000,
            self_service_per_minute: 1_000_000,
            self_rotations_per_hour: 1_000_000,
            leak_reports_per_minute: 1_000_000,
            sign_ins_per_minute: 1_000_000,
        },
        ..Settings::default()
    }
}

/// A server running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client for it.
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server on a fresh database.
    pub async fn start() -> TestServer {
        let url = fresh_database().await;
        TestServer::start_with(settings_for(&url)).await
    }

    /// Starts a server with the given settings.
    pub async fn start_with(settings: Settings) -> TestServer {
        TestServer::from_app(App::build(settings).await.expect("server builds"))
    }

    /// Runs an app that was already built.
    pub fn from_app(app: App) -> TestServer {
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            client: reqwest::Client::new(),
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A GET to `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request answered")
    }

    /// Signals shutdown without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits until the server has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.signal_stop();
        match self.handle.take() {
            Some(handle) => handle.await.expect("server task joins"),
            None => Ok(()),
        }
    }
}

/// Polls `check` until it yields a value or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the link between keyplane and its database does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow.
    Up,
    /// Bytes are read but held until the link is up again.
    Stalled,
    /// Queries reach the database, its replies are held until the link is
    /// up again (a query that has read, and not yet answered); see
    /// [`FlakyLink::stall_replies_after`].
    RepliesStalled,
    /// Every connection is cut and new ones are refused.
    Down,
}

/// A TCP forwarder in front of PostgreSQL whose link can be stalled or cut,
/// to see what keyplane does when its database goes away.
pub struct FlakyLink {
    /// Where keyplane should connect.
    pub addr: SocketAddr,
    state: watch::Sender<Link>,
    held: Arc<AtomicUsize>,
    /// Replies still let through once replies are stalled.
    replies_passing: Arc<AtomicUsize>,
}

impl FlakyLink {
    /// Forwards to the host and port of `database_url`.
    pub async fn to(database_url: &str) -> FlakyLink {
        let options: sqlx::postgres::PgConnectOptions = database_url.parse().expect("database url");
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind link");
        let addr = listener.local_addr().expect("link addr");
        let (state, _) = watch::channel(Link::Up);
        let held = Arc::new(AtomicUsize::new(0));
        let replies_passing = Arc::new(AtomicUsize::new(0));
        let link = FlakyLink {
            addr,
            state: state.clone(),
            held: held.clone(),
            replies_passing: replies_passing.clone(),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *state.borrow() == Link::Down {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(
                    client_read,
                    server_write,
                    state.subscribe(),
                    held.clone(),
                    None,
                ));
                tokio::spawn(pump(
                    server_read,
                    client_write,
                    state.subscribe(),
                    held.clone(),
                    Some(replies_passing.clone()),
                ));
            }
        });
        link
    }

    /// `database_url` rewritten to go through this link.
    pub fn url_through(&self, database_url: &str) -> String {
        let options: sqlx::postgres::PgConnectOptions = database_url.parse().expect("database url");
        let original = format!("{}:{}", options.get_host(), options.get_port());
        database_url.replacen(&original, &self.addr.to_string(), 1)
    }

    /// Changes what the link does.
    pub fn set(&self, link: Link) {
        self.state.send_replace(link);
    }

    /// Lets `passing` more replies through, then holds the rest until the
    /// link is up again: a query that the database has answered, whose
    /// answer has not arrived.
    pub fn stall_replies_after(&self, passing: usize) {
        self.replies_passing.store(passing, Ordering::SeqCst);
        self.set(Link::RepliesStalled);
    }

    /// How many chunks have been held back while stalled.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<Link>,
    held: Arc<AtomicUsize>,
    replies_passing: Option<Arc<AtomicUsize>>,
) {
    let replies = replies_passing.is_some();
    let stalled =
        move |link: &Link| *link == Link::Stalled || (replies && *link == Link::RepliesStalled);
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = state.wait_for(|s| *s == Link::Down) => return,
        };
        let Ok(n @ 1..) = read else { return };
        let passes = *state.borrow() == Link::RepliesStalled
            && replies_passing.as_ref().is_some_and(|passing| {
                passing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            });
        if !passes {
            if stalled(&state.borrow()) {
                held.fetch_add(1, Ordering::SeqCst);
            }
            match state.wait_for(|s| !stalled(s)).await.map(|s| *s) {
                Ok(Link::Up | Link::RepliesStalled) => {}
                _ => return,
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A port that was free a moment ago, for servers that must be told their port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The master key test servers run with (32 bytes, base64).
pub const MASTER_KEY: &str = "a2V5cGxhbmUtdGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGU=";

/// The bootstrap token test servers run with.
pub const BOOTSTRAP: &str = "bootstrap-token-for-tests-0123456789abcdef";

/// Settings for a test server with the bootstrap token set.
pub fn admin_settings_for(database_url: &str) -> Settings {
    Settings {
        bootstrap_token: Some(SecretString::from(BOOTSTRAP.to_owned())),
        ..settings_for(database_url)
    }
}

impl TestServer {
    /// Starts a server on a fresh database, with the bootstrap token set.
    pub async fn start_admin() -> TestServer {
        let url = fresh_database().await;
        TestServer::start_with(admin_settings_for(&url)).await
    }

    /// Starts a server with `settings` on a clock that moves only when the
    /// test says so.
    pub async fn start_with_clock(
        settings: Settings,
    ) -> (TestServer, keyplane_server::clock::ManualClock) {
        let clock = keyplane_server::clock::ManualClock::at(chrono::Utc::now());
        let app = App::build_with_clock(settings, Arc::new(clock.clone()))
            .await
            .unwrap();
        (TestServer::from_app(app), clock)
    }

    /// Registers a webhook endpoint for `events`, delivered to a new
    /// [`Receiver`] (serving while the handle lives); answers the receiver,
    /// the handle and the endpoint (with its secret).
    pub async fn subscribe(&self, events: &[&str]) -> (Receiver, JoinHandle<()>, Value) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = Receiver::default();
        let serving = receiver.clone().start(listener).await;
        let (status, hook) = self
            .admin(
                reqwest::Method::POST,
                "/v1/webhooks",
                Some(serde_json::json!({ "url": url, "events": events })),
            )
            .await;
        assert_eq!(status, 201, "{hook}");
        (receiver, serving, hook)
    }

    /// A request to `path` authenticated with `token`.
    pub fn as_(&self, token: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// Sends `body` as JSON with the bootstrap token and answers status and body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(self.as_(BOOTSTRAP, method, path), body).await
    }

    /// Registers an instance with the given ceiling and answers its id.
    pub async fn instance(&self, name: &str, scopes: &[&str]) -> String {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/v1/instances",
                Some(serde_json::json!({ "name": name, "allowed_scopes": scopes })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Issues a key for `instance` and answers its whole body (with `secret`).
    pub async fn key(&self, instance: &str, request: Value) -> Value {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/instances/{instance}/keys"),
                Some(request),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }
}

/// Sends a request with an optional JSON body; answers status and JSON body
/// (null when there is none).
pub async fn call(request: reqwest::RequestBuilder, body: Option<Value>) -> (u16, Value) {
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.expect("request answered");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A receiver of webhook deliveries: what it got, and whether it is up.
#[derive(Clone, Default)]
pub struct Receiver {
    /// Every delivery: its headers and body.
    pub got: Arc<Mutex<Vec<(axum::http::HeaderMap, Value)>>>,
}

impl Receiver {
    /// Serves `POST /hook` on `listener`, keeping every delivery.
    pub async fn start(self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(got): axum::extract::State<Receiver>,
                 headers: axum::http::HeaderMap,
                 axum::Json(body): axum::Json<Value>| async move {
                    got.got.lock().unwrap().push((headers, body));
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        );
        let app = app.with_state(self);
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        })
    }

    /// The bodies of the deliveries of `event` so far.
    pub fn of(&self, event: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, body)| body["type"] == event)
            .map(|(_, body)| body.clone())
            .collect()
    }
}

/// An upstream that answers every request with an empty chat completion;
/// answers its base URL.
pub async fn stub_upstream() -> String {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move {
        let echo = axum::Router::new().fallback(|| async {
            axum::Json(serde_json::json!({"object": "chat.completion", "choices": []}))
        });
        axum::serve(upstream, echo).await.unwrap();
    });
    url
}

/// A `keyplane-gate` process (killed when dropped), started with `envs` on
/// a free port, its log written to `log`.
pub struct Gate {
    child: std::process::Child,
    /// Its base URL.
    pub base: String,
}

impl Gate {
    /// Starts the gate and waits until it serves.
    pub async fn start(envs: &[(&str, &str)], log: std::process::Stdio) -> Gate {
        let binary =
            std::path::Path::new(env!("CARGO_BIN_EXE_keyplane")).with_file_name("keyplane-gate");
        assert!(
            binary.exists(),
            "build the gate first: cargo build -p keyplane-gate"
        );
        let port = free_port();
        let child = std::process::Command::new(&binary)
            .envs(envs.iter().copied())
            .env("KEYPLANE_GATE_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let gate = Gate {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let health = format!("{}/_keyplane/healthz", gate.base);
        eventually(Duration::from_secs(30), "the gate to be up", || {
            let request = client.get(&health).send();
            async move { request.await.ok().filter(|r| r.status() == 200).map(drop) }
        })
        .await;
        gate
    }

    /// Stops the gate.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real nginx (from Debian's packages, which `scripts/test` installs) with
/// `deploy/nginx/keyplane-auth.conf` in front of an upstream, run from a
/// temporary prefix; killed when dropped. Its node key is read from
/// `keyplane-node-key.conf` in `dir`.
pub struct Nginx {
    child: std::process::Child,
    /// Its base URL.
    pub base: String,
    /// A shell command that makes it read its configuration again.
    pub reload: String,
}

impl Nginx {
    /// Starts nginx in `dir` between clients, keyplane at `keyplane` and
    /// `upstream` (both `host:port`), once `dir/keyplane-node-key.conf` exists.
    pub async fn start(dir: &std::path::Path, keyplane: &str, upstream: &str) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("nginx is missing: run the tests through scripts/test, which installs it");
        let port = free_port();
        let auth = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/nginx/keyplane-auth.conf"
        ))
        .unwrap()
        .replace("KEYPLANE_LISTEN", &format!("127.0.0.1:{port}"))
        .replace("KEYPLANE_ADDR", keyplane)
        .replace("KEYPLANE_UPSTREAM", upstream);
        std::fs::write(dir.join("keyplane-auth.conf"), auth).unwrap();
        let d = dir.display();
        let user = if std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
        {
            "user root;"
        } else {
            ""
        };
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "{user}\nworker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n\
                 access_log {d}/access.log;\nclient_body_temp_path {d}/client_body;\n\
                 proxy_temp_path {d}/proxy;\nfastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
                 include keyplane-auth.conf;\n}}\n"
            ),
        )
        .unwrap();
        let args = format!("-p {d} -c {d}/nginx.conf -e {d}/error.log");
        let globals = format!("pid {d}/nginx.pid; error_log {d}/error.log;");
        let child = std::process::Command::new(nginx)
            .args(args.split(' '))
            .arg("-g")
            .arg(format!("{globals} daemon off;"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let nginx = Nginx {
            child,
            base: format!("http://127.0.0.1:{port}"),
            reload: format!("{nginx} {args} -g '{globals}' -s reload"),
        };
        let client = reqwest::Client::new();
        let probe = format!("{}/v1/models", nginx.base);
        eventually(Duration::from_secs(30), "nginx to be up", || {
            let request = client.get(&probe).send();
            async move { request.await.ok().map(drop) }
        })
        .await;
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
