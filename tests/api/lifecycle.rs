use std::time::Duration;

use keyplane_server::App;
use serde_json::Value;

use crate::support::{FlakyLink, Link, TestServer, eventually, fresh_database, settings_for};

#[tokio::test]
async fn readyz_goes_503_while_the_database_is_away_and_200_once_it_is_back() {
    let url = fresh_database().await;
    let link = FlakyLink::to(&url).await;
    let server = TestServer::start_with(settings_for(&link.url_through(&url))).await;
    assert_eq!(server.get("/readyz").await.status(), 200);

    link.set(Link::Down);
    let body: serde_json::Value =
        eventually(Duration::from_secs(30), "readyz to answer 503", || async {
            let response = server.get("/readyz").await;
            (response.status() == 503).then_some(response)
        })
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["code"], "database_unavailable");
    // Liveness does not depend on the database.
    assert_eq!(server.get("/healthz").await.status(), 200);

    link.set(Link::Up);
    eventually(
        Duration::from_secs(30),
        "readyz to answer 200 again",
        || async { (server.get("/readyz").await.status() == 200).then_some(()) },
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let url = fresh_database().await;
    let link = FlakyLink::to(&url).await;
    let mut server = TestServer::start_with(settings_for(&link.url_through(&url))).await;
    assert_eq!(server.get("/readyz").await.status(), 200);

    // Hold the database's bytes so /readyz is still running when shutdown starts.
    link.set(Link::Stalled);
    let in_flight = tokio::spawn(server.client.get(server.url("/readyz")).send());
    eventually(
        Duration::from_secs(10),
        "the readiness query to reach the link",
        || async { (link.held() > 0).then_some(()) },
    )
    .await;
    server.signal_stop();
    // New connections are refused once shutdown has begun.
    let addr = server.addr;
    eventually(
        Duration::from_secs(10),
        "the listener to close",
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;

    link.set(Link::Up);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn startup_waits_for_a_database_that_comes_up_late() {
    let url = fresh_database().await;
    let link = FlakyLink::to(&url).await;
    link.set(Link::Down);
    let settings = settings_for(&link.url_through(&url));
    let starting = tokio::spawn(App::build(settings));
    tokio::time::sleep(Duration::from_millis(300)).await;
    if starting.is_finished() {
        panic!(
            "start-up gave up too soon: {:#}",
            starting.await.unwrap().err().unwrap()
        );
    }
    link.set(Link::Up);
    let app = starting
        .await
        .unwrap()
        .expect("server starts once the database is up");
    drop(app);
}

#[tokio::test]
async fn startup_gives_up_on_an_unreachable_database_with_a_clear_message() {
    let port = crate::support::free_port();
    let mut settings = settings_for(&format!(
        "postgres://keyplane:s3cret-pw@127.0.0.1:{port}/keyplane"
    ));
    settings.pool.startup_wait = Duration::from_millis(500);
    let err = App::build(settings).await.err().expect("start-up fails");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("127.0.0.1:{port}/keyplane not reachable after")),
        "{message}"
    );
    assert!(
        !message.contains("s3cret-pw"),
        "the password leaked: {message}"
    );
}

#[tokio::test]
async fn metrics_scrapes_read_no_database_and_survive_its_absence() {
    let url = fresh_database().await;
    let link = FlakyLink::to(&url).await;
    let server = TestServer::start_with(keyplane_server::Settings {
        metrics_refresh: Duration::from_millis(200),
        bootstrap_token: Some(secrecy::SecretString::from(crate::support::BOOTSTRAP)),
        ..settings_for(&link.url_through(&url))
    })
    .await;
    let instance = server.instance("jan", &["inference:chat"]).await;
    server
        .key(
            &instance,
            serde_json::json!({"name": "k", "scopes": ["inference:chat"]}),
        )
        .await;
    let gauge = "keyplane_keys{status=\"active\"} 1";
    eventually(
        Duration::from_secs(30),
        "the background read to see the key",
        || async {
            let text = server.get("/metrics").await.text().await.ok()?;
            text.contains(gauge).then_some(())
        },
    )
    .await;
    // The database goes away: scrapes are still answered, with the figures
    // last read, because a scrape never queries it.
    link.set(Link::Down);
    for _ in 0..20 {
        let response = server.get("/metrics").await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(text.contains(gauge), "{text}");
        assert!(text.contains("keyplane_gauges_age_seconds"));
    }
    link.set(Link::Up);
    server.stop().await.unwrap();
}

/// Status, `Retry-After` and problem code of a management request.
async fn attempt(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
) -> (u16, Option<String>, Value) {
    let response = server
        .as_(crate::support::BOOTSTRAP, method, path)
        .json(&serde_json::json!({"name": format!("jan-{}", uuid::Uuid::new_v4())}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_lost_database_is_503_with_retry_after_never_500() {
    let url = fresh_database().await;
    let link = FlakyLink::to(&url).await;
    let mut settings = crate::support::admin_settings_for(&link.url_through(&url));
    settings.pool.acquire_timeout = Duration::from_millis(500);
    let server = TestServer::start_with(settings).await;
    let (status, _, _) = attempt(&server, reqwest::Method::POST, "/v1/instances").await;
    assert_eq!(status, 201);

    link.set(Link::Down);
    for (method, path) in [
        (reqwest::Method::POST, "/v1/instances"),
        (reqwest::Method::GET, "/v1/instances"),
        (reqwest::Method::POST, "/v1/instances"),
    ] {
        let (status, retry, body) = attempt(&server, method.clone(), path).await;
        assert_eq!(status, 503, "{method} {path}: {body}");
        assert_eq!(body["code"], "database_unavailable", "{body}");
        assert_eq!(retry.as_deref(), Some("2"));
    }

    link.set(Link::Up);
    eventually(Duration::from_secs(30), "writes to work again", || async {
        let (status, _, _) = attempt(&server, reqwest::Method::POST, "/v1/instances").await;
        (status == 201).then_some(())
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_read_only_database_makes_readyz_503_and_writes_503() {
    let url = fresh_database().await;
    let server = TestServer::start_with(crate::support::admin_settings_for(&url)).await;
    assert_eq!(server.get("/readyz").await.status(), 200);
    let name = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let admin = sqlx::PgPool::connect(&crate::support::admin_url())
        .await
        .unwrap();
    // As a standby (or a demoted primary) would: every new session read-only.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "alter database {name} set default_transaction_read_only = on"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let drop_sessions = || {
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()")
            .bind(&name)
            .execute(&admin)
    };
    drop_sessions().await.unwrap();

    let body: Value = eventually(Duration::from_secs(30), "readyz to answer 503", || async {
        let response = server.get("/readyz").await;
        (response.status() == 503).then_some(response)
    })
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["code"], "database_read_only", "{body}");
    let (status, retry, body) =
        eventually(Duration::from_secs(30), "a write to be refused", || async {
            let answer = attempt(&server, reqwest::Method::POST, "/v1/instances").await;
            (answer.0 != 201).then_some(answer)
        })
        .await;
    assert_eq!((status, retry.as_deref()), (503, Some("2")), "{body}");
    assert_eq!(body["code"], "database_unavailable");
    // Reads still work.
    assert_eq!(
        attempt(&server, reqwest::Method::GET, "/v1/instances")
            .await
            .0,
        200
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "alter database {name} set default_transaction_read_only = off"
    )))
    .execute(&admin)
    .await
    .unwrap();
    drop_sessions().await.unwrap();
    eventually(
        Duration::from_secs(30),
        "readyz to answer 200 again",
        || async { (server.get("/readyz").await.status() == 200).then_some(()) },
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn with_a_standby_introspection_misses_are_answered_while_the_primary_is_away() {
    let url = fresh_database().await;
    let link = FlakyLink::to(&url).await;
    let mut settings = crate::support::admin_settings_for(&link.url_through(&url));
    settings.pool.acquire_timeout = Duration::from_millis(500);
    // The "standby" is the same database reached directly: what matters is
    // which link the lookups take.
    settings.database_read = Some(secrecy::SecretString::from(url.clone()));
    let server = TestServer::start_with(settings).await;
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let issue = || {
        server.key(
            &instance,
            serde_json::json!({"name": "k", "scopes": ["inference:chat"]}),
        )
    };
    let (seen, unseen) = (issue().await, issue().await);
    let (_, node) = server
        .admin(
            reqwest::Method::POST,
            "/v1/nodes",
            Some(serde_json::json!({"name": "gate-1"})),
        )
        .await;
    let node_key = node["secret"].as_str().unwrap().to_owned();
    let introspect = |key: &Value| {
        server
            .client
            .post(server.url("/v1/introspect"))
            .bearer_auth(&node_key)
            .form(&[("token", key["secret"].as_str().unwrap())])
            .send()
    };
    assert_eq!(
        introspect(&seen)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["active"],
        true
    );

    link.set(Link::Down);
    // A key the cache has never seen: read from the standby (without one,
    // this is 503).
    let response = introspect(&unseen).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["active"], true);
    // Writes still need the primary.
    let (status, _, body) = attempt(&server, reqwest::Method::POST, "/v1/instances").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("database_unavailable"))
    );
    link.set(Link::Up);
    server.stop().await.unwrap();
}
