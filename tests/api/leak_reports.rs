//! Leaked keys die within seconds: anyone may report one (`POST
//! /v1/leaks`), a working key is stopped at once everywhere, and the answer
//! never says whether a key existed.

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use keyplane_domain::{KeyKind, KeySecret};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    Gate, TestServer, admin_settings_for, call, eventually, fresh_database, stub_upstream,
};

/// Reports `body` (a finding or a list of them) with no signature.
async fn report(server: &TestServer, body: &Value) -> (u16, Value) {
    call(
        server.client.post(server.url("/v1/leaks")),
        Some(body.clone()),
    )
    .await
}

/// How many `credential.leaked` entries the audit log holds.
async fn leaked_entries(server: &TestServer) -> Vec<Value> {
    let (_, page) = server
        .admin(Method::GET, "/v1/audit?action=credential.leaked", None)
        .await;
    page["items"].as_array().unwrap().clone()
}

fn secret(body: &Value) -> String {
    body["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_reported_leak_is_refused_at_a_subscribed_gate_within_a_second() {
    let server = TestServer::start_admin().await;
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "gate-1"})))
        .await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = secret(
        &server
            .key(
                &instance,
                json!({"name": "k", "scopes": ["inference:chat"]}),
            )
            .await,
    );
    let upstream = stub_upstream().await;
    let keyplane = format!("http://{}", server.addr);
    let _gate = Gate::start(
        &[
            ("KEYPLANE_URL", &keyplane),
            ("KEYPLANE_NODE_KEY", node["secret"].as_str().unwrap()),
            ("KEYPLANE_GATE_UPSTREAM", &upstream),
            // Answers cached for as long as keyplane allows (30 s): only
            // the stream can end one within a second.
            ("KEYPLANE_GATE_CACHE_TTL", "1h"),
        ],
        Stdio::null(),
    )
    .await;
    let client = reqwest::Client::new();
    let chat = |key: String| {
        let request = client
            .post(format!("{}/v1/chat/completions", _gate.base))
            .bearer_auth(key)
            .json(&json!({"model": "m", "messages": []}))
            .send();
        async move { request.await.unwrap().status().as_u16() }
    };
    assert_eq!(chat(key.clone()).await, 200, "the key works, and is cached");

    let reported = Instant::now();
    let (status, answer) = report(
        &server,
        &json!({"token": key, "url": "https://example.org/repo/.env", "source": "content"}),
    )
    .await;
    assert_eq!((status, &answer), (202, &json!({"received": 1})));
    eventually(
        Duration::from_secs(1),
        "the gate to refuse the leaked key",
        || async { (chat(key.clone()).await == 401).then_some(()) },
    )
    .await;
    assert!(reported.elapsed() < Duration::from_secs(1));

    let entries = leaked_entries(&server).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        entries[0]["details"]["url"],
        "https://example.org/repo/.env"
    );
    assert!(!serde_json::to_string(&entries).unwrap().contains(&key));
}

#[tokio::test]
async fn reports_reveal_nothing_and_change_nothing_twice() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    let issue = || {
        server.key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
    };
    let live = issue().await;
    let bystander = issue().await;
    let (_, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "cortex-1"})))
        .await;
    let (_, admin) = server
        .admin(
            Method::POST,
            "/v1/admin-keys",
            Some(json!({"name": "ops", "role": "viewer"})),
        )
        .await;
    let (_, token) = server
        .admin(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(json!({"name": "fleet", "scopes": ["inference:chat"]})),
        )
        .await;
    let unknown = KeySecret::generate(KeyKind::Instance).unwrap();

    // Garbage, another vendor's key, a well-formed key that does not exist
    // and a live one: one answer for all.
    let mut answers = Vec::new();
    for token in [
        "hello".to_owned(),
        "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz".to_owned(),
        unknown.expose().to_owned(),
        secret(&live),
    ] {
        answers.push(report(&server, &json!({"token": token})).await);
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0], (202, json!({"received": 1})));
    let status_of = |id: &Value| {
        let server = &server;
        let path = format!("/v1/keys/{}", id.as_str().unwrap());
        async move { server.admin(Method::GET, &path, None).await.1["status"].clone() }
    };
    assert_eq!(status_of(&live["id"]).await, "revoked");

    // The same key again, twice in one list and once alone: nothing more.
    let twice = json!([{"token": secret(&live)}, {"token": secret(&live)}]);
    assert_eq!(report(&server, &twice).await, (202, json!({"received": 2})));
    assert_eq!(leaked_entries(&server).await.len(), 1);

    // Too many findings in one body are refused whole: nothing is stopped.
    let flood: Vec<Value> = (0..10_000)
        .map(|i| match i {
            5_000 => json!({"token": secret(&bystander)}),
            _ => json!({"token": format!("kpi_{i:038}")}),
        })
        .collect();
    let (status, _) = report(&server, &Value::Array(flood)).await;
    assert_eq!(status, 413);
    let many: Vec<Value> = (0..101)
        .map(|i| match i {
            50 => json!({"token": secret(&bystander)}),
            _ => json!({"token": "x"}),
        })
        .collect();
    let (status, body) = report(&server, &Value::Array(many)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(status_of(&bystander["id"]).await, "active");
    for bad in [json!("kpi_x"), json!({"url": "u"}), json!([1, 2])] {
        assert_eq!(report(&server, &bad).await.0, 422, "{bad}");
    }

    // Every kind of credential stops.
    let findings = json!([
        {"token": secret(&node), "source": "commit"},
        {"token": secret(&admin), "source": "issue"},
        {"token": secret(&token), "source": "content"},
    ]);
    assert_eq!(
        report(&server, &findings).await,
        (202, json!({"received": 3}))
    );
    let (status, _) = call(server.as_(&secret(&admin), Method::GET, "/v1/nodes"), None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        server.as_(&secret(&node), Method::GET, "/v1/nodes/self"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        server.as_(&secret(&token), Method::POST, "/v1/enroll"),
        Some(json!({"name": "jan-2"})),
    )
    .await;
    assert_eq!(status, 401);
    // The node keeps its id: an operator gives it a new key.
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/nodes/{}/rotate", node["id"].as_str().unwrap()),
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, 201);
    let entries = leaked_entries(&server).await;
    assert_eq!(entries.len(), 4);
    let text = serde_json::to_string(&entries).unwrap();
    for whole in [secret(&live), secret(&node), secret(&admin), secret(&token)] {
        assert!(!text.contains(&whole), "a whole key in the audit log");
    }
}

#[tokio::test]
async fn unsigned_reports_are_rate_limited_per_address() {
    let url = fresh_database().await;
    let mut settings = admin_settings_for(&url);
    settings.limits.leak_reports_per_minute = 3;
    let server = TestServer::start_with(settings).await;
    for _ in 0..3 {
        assert_eq!(report(&server, &json!({"token": "x"})).await.0, 202);
    }
    let (status, body) = report(&server, &json!({"token": "x"})).await;
    assert_eq!(status, 429, "{body}");
}

#[tokio::test]
async fn a_github_signed_report_must_verify() {
    let url = fresh_database().await;
    let signing = SigningKey::random(&mut rand_core::OsRng);
    let pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("secret_scanning.json");
    std::fs::write(
        &keys,
        json!({"public_keys": [{"key_identifier": "gh-1", "key": pem, "is_current": true}]})
            .to_string(),
    )
    .unwrap();
    let mut settings = admin_settings_for(&url);
    settings.leak_report_keys = keyplane_server::reporters::ReporterKeys::load(&keys).unwrap();
    // Signed reports do not spend the per-address budget.
    settings.limits.leak_reports_per_minute = 1;
    let server = TestServer::start_with(settings).await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;

    let body = json!([{
        "token": secret(&key),
        "type": "keyplane_api_key",
        "url": "https://github.com/octo/repo/blob/abc/.env",
        "source": "content",
    }])
    .to_string();
    let sign = |text: &str| {
        let signature: Signature = signing.sign(text.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    };
    let send = |id: &str, signature: String, body: String| {
        server
            .client
            .post(server.url("/v1/leaks"))
            .header("content-type", "application/json")
            .header("Github-Public-Key-Identifier", id)
            .header("Github-Public-Key-Signature", signature)
            .body(body)
            .send()
    };
    // Signed by another body, or naming an unknown key: refused, unchanged.
    let forged = send("gh-1", sign("[]"), body.clone()).await.unwrap();
    assert_eq!(forged.status(), 401);
    let unknown = send("gh-2", sign(&body), body.clone()).await.unwrap();
    assert_eq!(unknown.status(), 401);
    assert!(leaked_entries(&server).await.is_empty());

    for _ in 0..2 {
        let signed = send("gh-1", sign(&body), body.clone()).await.unwrap();
        assert_eq!(signed.status(), 202);
    }
    let entries = leaked_entries(&server).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["details"]["signed_by"], "gh-1");
    assert_eq!(entries[0]["details"]["source"], "content");
}

#[tokio::test]
async fn keyplane_scan_finds_keys_in_files_and_reports_them() {
    let server = TestServer::start_admin().await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let whole = secret(&key);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    std::fs::write(
        dir.path().join("app/.env"),
        format!("# Jan\nOPENAI_API_KEY={whole}\nOTHER=kpi_notakey\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("README"), "no keys here\n").unwrap();

    // The server runs on this test's thread: the command must not block it.
    let run = |args: &[&str]| {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyplane"))
            .arg("scan")
            .args(args)
            .env_remove("KEYPLANE_URL")
            .output();
        async move {
            let output = output.await.unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };
    let folder = dir.path().to_str().unwrap();
    let (code, out, err) = run(&[folder]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    let masked = key["masked_key"].as_str().unwrap();
    assert_eq!(
        out.trim(),
        format!("{folder}/app/.env:2: {masked} (instance key)")
    );
    assert!(!out.contains(&whole) && !err.contains(&whole));
    let readme = dir.path().join("README");
    assert_eq!(run(&[readme.to_str().unwrap()]).await.0, Some(0));
    assert_eq!(
        run(&[folder, "--report"]).await.0,
        Some(2),
        "--report needs a URL"
    );

    let keyplane = format!("http://{}", server.addr);
    let (code, out, err) = run(&[folder, "--report", "--url", &keyplane]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(!out.contains(&whole) && !err.contains(&whole));
    let (_, after) = server
        .admin(
            Method::GET,
            &format!("/v1/keys/{}", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(after["status"], "revoked");
    let entries = leaked_entries(&server).await;
    assert_eq!(entries[0]["details"]["source"], "keyplane scan");
    assert!(
        entries[0]["details"]["url"]
            .as_str()
            .unwrap()
            .ends_with("app/.env#L2")
    );
}
