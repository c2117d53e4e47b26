//! HTTPS: keyplane serves TLS from PEM files, with HSTS, and shrugs off plain
//! HTTP sent to its TLS port.

use std::sync::Arc;

use keyplane_server::config::TlsSettings;

use crate::cli::certificate;
use crate::support::{TestServer, fresh_database, settings_for};

#[tokio::test]
async fn keyplane_serves_https_with_hsts_and_survives_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "keyplane");
    let certificates = keyplane_tls::Certificates::load(&cert, &key).unwrap();
    let url = fresh_database().await;
    let settings = keyplane_server::Settings {
        tls: Some(TlsSettings {
            cert: cert.clone(),
            key,
            certificates: Arc::clone(&certificates),
        }),
        ..settings_for(&url)
    };
    let server = TestServer::start_with(settings).await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let health = format!("https://127.0.0.1:{}/healthz", server.addr.port());

    let response = https.get(&health).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");

    // Plain HTTP to the TLS port gets no answer, and breaks nothing.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", server.addr.port()))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered on the TLS port");
    // An unknown certificate is refused by a verifying client.
    let strict = reqwest::Client::new().get(&health).send().await;
    assert!(
        strict.is_err(),
        "a client without the CA accepted the certificate"
    );
    assert_eq!(https.get(&health).send().await.unwrap().status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_sighup_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "first");
    let url = fresh_database().await;
    let port = crate::support::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyplane"))
        .arg("serve")
        .env("DATABASE_URL", &url)
        .env("KEYPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYPLANE_TLS_CERT", &cert)
        .env("KEYPLANE_TLS_KEY", &key)
        .env("KEYPLANE_MASTER_KEY", crate::support::MASTER_KEY)
        .env("KEYPLANE_DATA_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let trusting = |pem: &std::path::Path| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(pem).unwrap()).unwrap()])
            .build()
            .unwrap()
    };
    let health = format!("https://127.0.0.1:{port}/healthz");
    let first = trusting(&cert);
    crate::support::eventually(
        std::time::Duration::from_secs(30),
        "keyplane over HTTPS",
        || {
            let request = first.get(&health).send();
            async move { request.await.ok().filter(|r| r.status() == 200).map(drop) }
        },
    )
    .await;

    // Renew the files in place, as a certificate manager would, and say so.
    let renewed = tempfile::tempdir().unwrap();
    let (new_cert, new_key) = certificate(renewed.path(), "second");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let second = trusting(&cert);
    crate::support::eventually(
        std::time::Duration::from_secs(30),
        "the renewed certificate",
        || {
            let request = second.get(&health).send();
            async move { request.await.ok().filter(|r| r.status() == 200).map(drop) }
        },
    )
    .await;
    // The connection opened under the old certificate is still served.
    assert_eq!(first.get(&health).send().await.unwrap().status(), 200);

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// `keyplane serve` in prod with `env`; answers whether /readyz came up over
/// HTTPS, and the process' exit status and stderr when it did not.
async fn prod_keyplane(database_url: &str, dir: &std::path::Path) -> (bool, String) {
    let (cert, key) = certificate(dir, "keyplane");
    let port = crate::support::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyplane"))
        .arg("serve")
        .env("KEYPLANE_MODE", "prod")
        .env("DATABASE_URL", database_url)
        .env("KEYPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYPLANE_TLS_CERT", &cert)
        .env("KEYPLANE_TLS_KEY", &key)
        .env("KEYPLANE_MASTER_KEY", crate::support::MASTER_KEY)
        .env("KEYPLANE_DB_STARTUP_WAIT", "2s")
        .env("KEYPLANE_LOG_FORMAT", "text")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap()])
        .build()
        .unwrap();
    let ready = format!("https://127.0.0.1:{port}/readyz");
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(30) {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            return (false, format!("{status}: {stderr}"));
        }
        if https
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            let _ = child.kill();
            let _ = child.wait();
            return (true, String::new());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    (false, "timed out".to_owned())
}

#[tokio::test]
async fn prod_reaches_postgresql_over_verified_tls_and_only_so() {
    let ca = std::env::var("KEYPLANE_TEST_PG_CA")
        .expect("run through scripts/test, which starts PostgreSQL with TLS");
    let url = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();

    let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    let (ready, why) = prod_keyplane(&verified, dir.path()).await;
    assert!(ready, "prod did not come up over verified TLS: {why}");

    // A CA that did not sign the database's certificate: no connection, and
    // the refusal says so without printing the URL.
    let (stranger, _) = certificate(dir.path(), "stranger");
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        url.replace("postgres@", "postgres:hunter2@"),
        stranger.display()
    );
    let (ready, why) = prod_keyplane(&wrong, dir.path()).await;
    assert!(
        !ready,
        "connected although the database's certificate is not trusted"
    );
    assert!(why.contains("database"), "{why}");
    assert!(
        !why.contains("hunter2"),
        "the database password was printed: {why}"
    );
}

#[tokio::test]
async fn the_client_library_verifies_keyplanes_certificate_against_its_ca_bundle() {
    use keyplane_client::{Config, Introspector, Refusal};

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "keyplane");
    let url = fresh_database().await;
    let server = TestServer::start_with(keyplane_server::Settings {
        tls: Some(TlsSettings {
            certificates: keyplane_tls::Certificates::load(&cert, &key).unwrap(),
            cert: cert.clone(),
            key,
        }),
        ..crate::support::admin_settings_for(&url)
    })
    .await;
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap()])
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let admin = |path: &str, body: serde_json::Value| {
        https
            .post(format!("{base}{path}"))
            .bearer_auth(crate::support::BOOTSTRAP)
            .json(&body)
            .send()
    };
    let node: serde_json::Value = admin("/v1/nodes", serde_json::json!({"name": "n"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let instance: serde_json::Value = admin(
        "/v1/instances",
        serde_json::json!({"name": "i", "allowed_scopes": ["inference:chat"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key: serde_json::Value = admin(
        &format!("/v1/instances/{}/keys", instance["id"].as_str().unwrap()),
        serde_json::json!({"name": "k", "scopes": ["inference:chat"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let node_key = secrecy::SecretString::from(node["secret"].as_str().unwrap().to_owned());
    let secret = key["secret"].as_str().unwrap();

    let mut trusting = Config::new(&base, node_key.clone(), keyplane_domain::Mode::Prod);
    trusting.ca_bundle = Some(cert.clone());
    let trusting = Introspector::start(trusting).unwrap();
    assert!(
        trusting
            .check(secret, Some("inference:chat"), None)
            .await
            .is_ok()
    );

    // Without the CA, keyplane's certificate is not trusted: fail closed.
    let stranger =
        Introspector::start(Config::new(&base, node_key, keyplane_domain::Mode::Prod)).unwrap();
    assert_eq!(
        stranger.check(secret, None, None).await,
        Err(Refusal::Unavailable)
    );

    // A bundle that is not PEM is refused at start.
    let mut broken = Config::new(
        &base,
        secrecy::SecretString::from(node["secret"].as_str().unwrap().to_owned()),
        keyplane_domain::Mode::Prod,
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    broken.ca_bundle = Some(garbage);
    assert!(Introspector::start(broken).is_err());
}
