//! Connections that never speak, speak HTTP/2 and ask for nothing, sit
//! idle, or come in greater numbers than allowed: raw sockets against the
//! real `keyplane` and `keyplane-gate` binaries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BOOTSTRAP, free_port, fresh_database};

/// A server process, killed when dropped.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which binary, and how to start it with its connection settings.
#[derive(Debug, Clone, Copy)]
enum Binary {
    Keyplane,
    Gate,
}

/// How long a test waits for something that must happen.
const DEADLINE: Duration = Duration::from_secs(20);

impl Binary {
    /// Starts it on a free port with a header timeout of `header`, an idle
    /// timeout of `idle` and at most `max` connections (and `extra` env).
    async fn start(self, header: &str, idle: &str, max: &str, extra: &[(&str, String)]) -> Running {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = match self {
            Binary::Keyplane => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_keyplane"));
                command
                    .arg("serve")
                    .env("DATABASE_URL", fresh_database().await)
                    .env("KEYPLANE_LISTEN", &addr)
                    .env("KEYPLANE_BOOTSTRAP_TOKEN", BOOTSTRAP)
                    .env("KEYPLANE_MASTER_KEY", crate::support::MASTER_KEY)
                    .env("KEYPLANE_HEADER_TIMEOUT", header)
                    .env("KEYPLANE_IDLE_TIMEOUT", idle)
                    .env("KEYPLANE_MAX_CONNECTIONS", max);
                command
            }
            Binary::Gate => {
                let gate = std::path::Path::new(env!("CARGO_BIN_EXE_keyplane"))
                    .with_file_name("keyplane-gate");
                let mut command = Command::new(gate);
                command
                    .env("KEYPLANE_AUTH", "disabled")
                    .env("KEYPLANE_GATE_LISTEN", &addr)
                    .env("KEYPLANE_GATE_UPSTREAM", "http://127.0.0.1:9")
                    .env("KEYPLANE_GATE_HEADER_TIMEOUT", header)
                    .env("KEYPLANE_GATE_IDLE_TIMEOUT", idle)
                    .env("KEYPLANE_GATE_MAX_CONNECTIONS", max);
                command
            }
        };
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command
            .env_remove("KEYPLANE_MODE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let running = Running { child, addr };
        let started = Instant::now();
        while TcpStream::connect(&running.addr).is_err() {
            assert!(started.elapsed() < DEADLINE, "{self:?} did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Both bind their port once ready to serve (keyplane: migrated).
        running
    }
}

/// Whether the server closes `socket` before `deadline` (reading and
/// discarding whatever it sends first).
fn closed_within(socket: &mut TcpStream, deadline: Duration) -> bool {
    let started = Instant::now();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    while started.elapsed() < deadline {
        match socket.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// One HTTP/1.1 GET on a new connection: the status and the connection.
fn http_get(addr: &str, path: &str, host: &str) -> (u16, TcpStream) {
    let mut socket = TcpStream::connect(addr).unwrap();
    write!(socket, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let status = read_status(&mut socket);
    (status, socket)
}

/// The status of the response arriving on `socket`.
fn read_status(socket: &mut TcpStream) -> u16 {
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match socket.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The client preface of HTTP/2 and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn connections_that_ask_for_nothing_are_closed_by_keyplane_and_the_gate() {
    for binary in [Binary::Keyplane, Binary::Gate] {
        let server = binary.start("1s", "2s", "100", &[]).await;
        // Says nothing at all.
        let mut silent = TcpStream::connect(&server.addr).unwrap();
        assert!(closed_within(&mut silent, DEADLINE), "{binary:?}: silent");
        // Opens HTTP/2 and asks for nothing.
        let mut h2 = TcpStream::connect(&server.addr).unwrap();
        h2.write_all(H2_PREFACE).unwrap();
        assert!(closed_within(&mut h2, DEADLINE), "{binary:?}: HTTP/2");
        // Keeps an HTTP/1.1 connection after its answer and asks no more.
        let (status, mut kept) = http_get(&server.addr, "/nope", "localhost");
        assert_ne!(status, 0);
        assert!(closed_within(&mut kept, DEADLINE), "{binary:?}: keep-alive");
    }
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::cli::certificate(dir.path(), "server");
    let server = Binary::Keyplane
        .start(
            "1s",
            "2s",
            "100",
            &[
                ("KEYPLANE_TLS_CERT", cert.display().to_string()),
                ("KEYPLANE_TLS_KEY", key.display().to_string()),
            ],
        )
        .await;
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    assert!(closed_within(&mut silent, DEADLINE));
}

#[tokio::test]
async fn a_response_still_streaming_keeps_its_connection_past_the_idle_timeout() {
    let server = Binary::Keyplane.start("1s", "1s", "100", &[]).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let node: serde_json::Value = client
        .post(format!("{base}/v1/nodes"))
        .bearer_auth(BOOTSTRAP)
        .json(&serde_json::json!({"name": "streamer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "GET /v1/revocations/stream HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        node["secret"].as_str().unwrap()
    )
    .unwrap();
    assert_eq!(read_status(&mut stream), 200);
    // Three idle periods: the stream is in flight, so the connection stays.
    assert!(!closed_within(&mut stream, Duration::from_secs(3)));
}

#[tokio::test]
async fn connections_past_the_bound_wait_for_a_place() {
    for binary in [Binary::Keyplane, Binary::Gate] {
        let server = binary.start("60s", "60s", "3", &[]).await;
        // The first request's connection closes as soon as it is answered.
        let held: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(&server.addr).unwrap())
            .collect();
        let mut waiting = TcpStream::connect(&server.addr).unwrap();
        let health = match binary {
            Binary::Keyplane => "/healthz",
            Binary::Gate => "/_keyplane/healthz",
        };
        write!(
            waiting,
            "GET {health} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        // Not served while three connections hold every place (a bounded
        // look: it must not be answered within a second).
        waiting
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(
            matches!(waiting.read(&mut byte), Err(ref e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "{binary:?} served a connection past its bound"
        );
        // One goes away: the waiting one gets its place and its answer.
        drop(held);
        assert_eq!(read_status(&mut waiting), 200, "{binary:?}");
    }
}

#[tokio::test]
async fn a_gate_without_auth_answers_only_for_localhost() {
    let server = Binary::Gate.start("5s", "5s", "100", &[]).await;
    let (status, _) = http_get(&server.addr, "/v1/models", "evil.example");
    assert_eq!(status, 421, "a DNS name rebound to 127.0.0.1");
    let (status, _) = http_get(&server.addr, "/v1/models", "localhost:8090");
    assert_eq!(status, 502, "passed on (nothing listens upstream)");
}
