//! HTTPS: keyplane serves TLS from PEM files, with HSTS, and shrugs off plain
//! HTTP sent to its TLS port.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

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
            client_ca: None,
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
            client_ca: None,
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

/// A CA and a function that issues client certificates naming a DNS name.
struct ClientCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    fn new() -> ClientCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        ClientCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A client certificate and key for `name`, written under `dir`.
    fn issue(&self, dir: &std::path::Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        self.sign(dir, file, params)
    }

    /// A client certificate bound to a node's id (URI SAN), naming no DNS name.
    fn issue_for_id(&self, dir: &std::path::Path, file: &str, id: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(format!("urn:keyplane:node:{id}")).unwrap(),
        )];
        self.sign(dir, file, params)
    }

    /// Signs `params` for a day's client authentication.
    fn sign(
        &self,
        dir: &std::path::Path,
        file: &str,
        mut params: rcgen::CertificateParams,
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(1);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

#[tokio::test]
async fn a_node_may_authenticate_with_a_client_certificate_bound_to_its_name() {
    use reqwest::Method;

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "keyplane");
    let ca = ClientCa::new();
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let edge_1 = ca.issue(dir.path(), "edge-1", "edge-1");
    let edge_2 = ca.issue(dir.path(), "edge-2", "edge-2");
    let nobody = ca.issue(dir.path(), "edge-3", "edge-3");
    let forged = ClientCa::new().issue(dir.path(), "forged", "edge-1");

    let url = fresh_database().await;
    let server = TestServer::start_with(keyplane_server::Settings {
        tls: Some(TlsSettings {
            certificates: keyplane_tls::Certificates::load_with_client_ca(
                &cert,
                &key,
                Some(&ca_path),
            )
            .unwrap(),
            cert: cert.clone(),
            key,
            client_ca: Some(ca_path.clone()),
        }),
        ..crate::support::admin_settings_for(&url)
    })
    .await;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let client = |identity: Option<&(PathBuf, PathBuf)>| {
        let mut builder =
            reqwest::Client::builder()
                .tls_certs_only([
                    reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
                ]);
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(cert).unwrap();
            pem.extend(std::fs::read(key).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    };
    let anonymous = client(None);
    let admin = |method: Method, path: &str, body: serde_json::Value| {
        crate::support::call(
            anonymous
                .request(method, format!("{base}{path}"))
                .bearer_auth(crate::support::BOOTSTRAP),
            Some(body),
        )
    };
    // The management API is served to clients without a certificate.
    let (status, node_1) = admin(Method::POST, "/v1/nodes", json!({"name": "edge-1"})).await;
    assert_eq!(status, 201, "{node_1}");
    let (_, node_2) = admin(Method::POST, "/v1/nodes", json!({"name": "edge-2"})).await;
    let (_, instance) = admin(
        Method::POST,
        "/v1/instances",
        json!({"name": "jan", "allowed_scopes": ["inference:chat"]}),
    )
    .await;
    let (_, api_key) = admin(
        Method::POST,
        &format!("/v1/instances/{}/keys", instance["id"].as_str().unwrap()),
        json!({"name": "k", "scopes": ["inference:chat"], "audience": ["edge-1"]}),
    )
    .await;
    let secret = api_key["secret"].as_str().unwrap();
    let node_1_key = node_1["secret"].as_str().unwrap();
    let introspect = |client: &reqwest::Client, node_key: Option<&str>| {
        let mut request = client
            .post(format!("{base}/v1/introspect"))
            .form(&[("token", secret)]);
        if let Some(node_key) = node_key {
            request = request.bearer_auth(node_key);
        }
        crate::support::call(request, None)
    };

    // The certificate alone authenticates edge-1: the key is meant for it.
    let edge_1_client = client(Some(&edge_1));
    let (status, answer) = introspect(&edge_1_client, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["active"], true);
    assert_eq!(answer["aud"], json!([node_1["id"]]));
    // Forward auth too: the bearer token is the client's key, the node is
    // the certificate.
    let forward = edge_1_client
        .get(format!("{base}/v1/authz/check"))
        .header("x-original-method", "POST")
        .header("x-original-uri", "/v1/chat/completions")
        .header("x-real-ip", "127.0.0.1")
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(forward.status(), 200);
    assert_eq!(
        forward.headers()["x-keyplane-instance"],
        instance["id"].as_str().unwrap()
    );
    // ...and with its node key as well.
    let (status, answer) = introspect(&edge_1_client, Some(node_1_key)).await;
    assert_eq!((status, &answer["active"]), (200, &json!(true)));
    // edge-2's certificate authenticates edge-2, for which the key is not meant.
    let (status, answer) = introspect(&client(Some(&edge_2)), None).await;
    assert_eq!((status, answer), (200, json!({"active": false})));
    // A certificate and a node key that name different nodes are refused.
    let (status, answer) = introspect(&client(Some(&edge_2)), Some(node_1_key)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("invalid_node_credentials"))
    );
    // Neither, or a certificate naming no node: 401.
    assert_eq!(introspect(&anonymous, None).await.0, 401);
    assert_eq!(introspect(&client(Some(&nobody)), None).await.0, 401);
    // A certificate from another CA does not get through the handshake.
    let refused = client(Some(&forged))
        .post(format!("{base}/v1/introspect"))
        .form(&[("token", secret)])
        .send()
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() == 401),
        "a foreign CA's certificate was accepted: {refused:?}"
    );

    // The client library presents the certificate alongside the node key.
    let mut config = keyplane_client::Config::new(
        &base,
        secrecy::SecretString::from(node_1_key.to_owned()),
        keyplane_domain::Mode::Prod,
    );
    config.ca_bundle = Some(cert.clone());
    config.client_identity = Some(edge_1.clone());
    let library = keyplane_client::Introspector::start(config).unwrap();
    assert!(
        library
            .check(secret, Some("inference:chat"), None)
            .await
            .is_ok()
    );

    // Retiring the node retires its certificate too.
    let (status, _) = admin(
        Method::DELETE,
        &format!("/v1/nodes/{}", node_1["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(introspect(&edge_1_client, None).await.0, 401);
    // Its name is not given to a new node while that certificate is valid:
    // the certificate would pass for the newcomer.
    let (status, refused) = admin(Method::POST, "/v1/nodes", json!({"name": "edge-1"})).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("urn:keyplane:node:")
    );

    // A certificate bound to a node's id (URI SAN) authenticates that node
    // and no other, whatever its name.
    let by_id = ca.issue_for_id(dir.path(), "edge-2-id", node_2["id"].as_str().unwrap());
    let by_id_client = client(Some(&by_id));
    let (status, answer) = introspect(&by_id_client, None).await;
    assert_eq!(
        (status, answer),
        (200, json!({"active": false})),
        "edge-2, not meant"
    );
    let heartbeat = by_id_client
        .post(format!("{base}/v1/heartbeat"))
        .json(&json!({"mode": "prod", "version": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(heartbeat.status(), 200);
    let (_, seen) = admin(
        Method::GET,
        &format!("/v1/nodes/{}", node_2["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    assert_eq!(
        seen["reported"]["version"], "test",
        "the heartbeat was edge-2's"
    );
    let stranger = ca.issue_for_id(dir.path(), "nobody-id", &uuid::Uuid::new_v4().to_string());
    assert_eq!(introspect(&client(Some(&stranger)), None).await.0, 401);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let url = fresh_database().await;
    let allowed = "https://console.example.com";
    let server = TestServer::start_with(keyplane_server::Settings {
        cors_origins: vec![reqwest::header::HeaderValue::from_static(allowed)],
        ..crate::support::admin_settings_for(&url)
    })
    .await;
    let preflight = |origin: &str| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url("/v1/instances"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let answer = preflight(allowed).await.unwrap();
    assert_eq!(answer.headers()["access-control-allow-origin"], allowed);
    let methods = answer.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    assert!(
        answer
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let elsewhere = preflight("https://evil.example.net").await.unwrap();
    assert!(
        elsewhere
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // A real request from the allowed origin can read the answer.
    let listed = server
        .as_(
            crate::support::BOOTSTRAP,
            reqwest::Method::GET,
            "/v1/instances",
        )
        .header("origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], allowed);
    server.stop().await.unwrap();

    // Without an allow-list, no CORS header at all.
    let plain =
        TestServer::start_with(crate::support::admin_settings_for(&fresh_database().await)).await;
    let answer = plain
        .client
        .request(reqwest::Method::OPTIONS, plain.url("/v1/instances"))
        .header("origin", allowed)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    plain.stop().await.unwrap();
}
