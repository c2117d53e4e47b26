//! The gate binary's start-up rules, run for real: each insecure setting is
//! refused with exit status 2 and one line naming it; `dev` without auth
//! marks every answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GATE: &str = env!("CARGO_BIN_EXE_keyplane-gate");
const NODE_KEY: &str = "kpn_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ000000";

fn gate(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(GATE);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command.env("KEYPLANE_GATE_UPSTREAM", "http://127.0.0.1:9");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Runs the gate expecting a refusal; answers its one line of stderr.
fn refused(env: &[(&str, &str)]) -> String {
    let output = gate(env).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn insecure_settings_are_refused_with_a_line_naming_them() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("KEYPLANE_MODE", "turbo")], "KEYPLANE_MODE"),
        (
            &[("KEYPLANE_AUTH", "disabled"), ("KEYPLANE_MODE", "mixed")],
            "KEYPLANE_AUTH",
        ),
        (
            &[
                ("KEYPLANE_AUTH", "disabled"),
                ("KEYPLANE_GATE_LISTEN", "0.0.0.0:0"),
            ],
            "KEYPLANE_AUTH",
        ),
        (&[], "KEYPLANE_URL"),
        (
            &[("KEYPLANE_URL", "http://127.0.0.1:1")],
            "KEYPLANE_NODE_KEY",
        ),
        (
            &[("KEYPLANE_URL", "ftp://x"), ("KEYPLANE_NODE_KEY", NODE_KEY)],
            "KEYPLANE_URL",
        ),
        (
            &[
                ("KEYPLANE_MODE", "mixed"),
                ("KEYPLANE_TLS_CERT", "/etc/gate.pem"),
                ("KEYPLANE_TLS_KEY", "/etc/gate-key.pem"),
                ("KEYPLANE_URL", "http://keyplane.internal:8080"),
                ("KEYPLANE_NODE_KEY", NODE_KEY),
            ],
            "KEYPLANE_URL: mixed mode talks to keyplane over HTTPS only",
        ),
        (
            &[
                ("KEYPLANE_MODE", "mixed"),
                ("KEYPLANE_URL", "https://keyplane.internal:8080"),
                ("KEYPLANE_NODE_KEY", NODE_KEY),
            ],
            "KEYPLANE_TLS_CERT: mixed serves HTTPS only",
        ),
        (
            &[
                ("KEYPLANE_AUTH", "disabled"),
                ("KEYPLANE_GATE_IDLE_TIMEOUT", "0s"),
            ],
            "KEYPLANE_GATE_IDLE_TIMEOUT",
        ),
        (
            &[
                ("KEYPLANE_AUTH", "disabled"),
                ("KEYPLANE_GATE_MAX_IN_FLIGHT", "0"),
            ],
            "KEYPLANE_GATE_MAX_IN_FLIGHT",
        ),
        (
            &[
                ("KEYPLANE_MODE", "prod"),
                ("KEYPLANE_URL", "http://127.0.0.1:1"),
            ],
            "KEYPLANE_TLS_CERT",
        ),
        (
            &[
                ("KEYPLANE_MODE", "prod"),
                ("KEYPLANE_ROUTE_SCOPES", "GET /v1/models=public"),
            ],
            "KEYPLANE_ROUTE_SCOPES",
        ),
        (
            &[("KEYPLANE_TLS_CERT", "/nonexistent.pem")],
            "KEYPLANE_TLS_CERT",
        ),
        (
            &[("KEYPLANE_CLIENT_CERT", "/nonexistent.pem")],
            "KEYPLANE_CLIENT_CERT",
        ),
        (
            &[("KEYPLANE_ROUTE_SCOPES", "GET /v1/models=Inference Chat")],
            "KEYPLANE_ROUTE_SCOPES",
        ),
        (
            &[
                ("KEYPLANE_AUTH", "disabled"),
                ("KEYPLANE_GATE_CACHE_TTL", "soon"),
            ],
            "KEYPLANE_GATE_CACHE_TTL",
        ),
        (
            &[
                ("KEYPLANE_URL", "http://127.0.0.1:1"),
                ("KEYPLANE_NODE_KEY", NODE_KEY),
                ("KEYPLANE_NODE_KEY_FILE", "/etc/hostname"),
            ],
            "KEYPLANE_NODE_KEY",
        ),
    ];
    for (env, named) in cases {
        let line = refused(env);
        assert!(line.contains(named), "{env:?} should name {named}: {line}");
        assert!(!line.contains(NODE_KEY), "the node key leaked: {line}");
    }
}

/// A running gate, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn dev_without_auth_marks_every_answer_and_caps_bodies() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = gate(&[
        ("KEYPLANE_AUTH", "disabled"),
        ("KEYPLANE_GATE_LISTEN", &listen),
        ("KEYPLANE_GATE_MAX_BODY", "1024"),
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _running = Running(child);
    // It warns at start that no key is checked.
    let mut lines = BufReader::new(stderr).lines();
    let mut warned = false;
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        if line.contains("KEYPLANE_AUTH=disabled") {
            warned = true;
        }
        if line.contains("keyplane-gate serving") {
            break;
        }
    }
    assert!(warned, "no warning that auth is off");
    // Keep reading, so the gate never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));

    let client = reqwest::blocking::Client::new();
    let url = |path: &str| format!("http://{listen}{path}");
    let started = Instant::now();
    let health = loop {
        match client.get(url("/_keyplane/healthz")).send() {
            Ok(response) => break response,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("the gate did not come up: {err}"),
        }
    };
    assert_eq!(health.headers()["x-keyplane-auth"], "disabled");
    assert_eq!(
        health.json::<serde_json::Value>().unwrap()["auth"],
        "disabled"
    );

    // No key needed, and the upstream (nothing listens there) is a 502 in OpenAI's shape.
    let response = client
        .post(url("/v1/chat/completions"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-keyplane-auth"], "disabled");
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");

    let response = client
        .post(url("/v1/chat/completions"))
        .body(vec![b'x'; 2048])
        .send()
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");
}
