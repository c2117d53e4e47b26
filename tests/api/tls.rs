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
    let config = keyplane_tls::server_config(&cert, &key).unwrap();
    let url = fresh_database().await;
    let settings = keyplane_server::Settings {
        tls: Some(TlsSettings {
            cert: cert.clone(),
            key,
            config: Arc::clone(&config),
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
