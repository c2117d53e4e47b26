//! The node-side library (`keyplane-client`) against a real keyplane:
//! offline refusals, the cache, one request per key in flight, revocations
//! pushed over the stream, and what each mode does while keyplane is away.

use std::sync::Arc;
use std::time::Duration;

use keyplane_client::{Config, Introspector, Refusal, StreamState};
use keyplane_domain::Mode;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::{TestServer, eventually};

const DEADLINE: Duration = Duration::from_secs(10);

/// A server with a node, an instance and a chat key: (server, node key, key body).
async fn setup() -> (TestServer, String, Value) {
    let server = TestServer::start_admin().await;
    let (status, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({ "name": "gate-1" })))
        .await;
    assert_eq!(status, 201, "{node}");
    let instance = server
        .instance("jan-1", &["inference:chat", "models:read"])
        .await;
    let key = server
        .key(
            &instance,
            json!({ "name": "k", "scopes": ["inference:chat"] }),
        )
        .await;
    (server, node["secret"].as_str().unwrap().to_owned(), key)
}

fn introspector(
    server: &TestServer,
    node_key: &str,
    mode: Mode,
    tune: impl FnOnce(&mut Config),
) -> Introspector {
    let mut config = Config::new(
        format!("http://{}", server.addr),
        SecretString::from(node_key.to_owned()),
        mode,
    );
    tune(&mut config);
    Introspector::start(config).unwrap()
}

async fn stream_up(client: &Introspector) {
    eventually(DEADLINE, "the revocation stream to connect", || async {
        (client.metrics().stream == StreamState::Up).then_some(())
    })
    .await;
}

fn secret(key: &Value) -> &str {
    key["secret"].as_str().unwrap()
}

#[tokio::test]
async fn garbage_is_refused_offline_and_good_keys_are_cached() {
    let (server, node_key, key) = setup().await;
    let client = introspector(&server, &node_key, Mode::Prod, |_| {});

    for garbage in [
        "",
        "hello",
        "kpi_",
        &format!("{}x", secret(&key)),
        &node_key,
    ] {
        assert_eq!(
            client.check(garbage, None, None).await,
            Err(Refusal::InvalidKey)
        );
    }
    // A well-formed key with one character changed fails its checksum.
    let mut typo = secret(&key).to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(
        client.check(&typo, None, None).await,
        Err(Refusal::InvalidKey)
    );
    let metrics = client.metrics();
    assert_eq!(
        (metrics.offline_rejects, metrics.misses),
        (6, 0),
        "{metrics:?}"
    );

    // (Once the stream is up: connecting drops whatever was cached before.)
    stream_up(&client).await;
    let identity = client
        .check(secret(&key), Some("inference:chat"), None)
        .await
        .unwrap();
    assert_eq!(identity.key_id.to_string(), key["id"].as_str().unwrap());
    assert!(identity.has_scope("inference:chat") && !identity.has_scope("models:read"));
    assert_eq!(
        client.check(secret(&key), Some("models:read"), None).await,
        Err(Refusal::MissingScope("models:read".to_owned()))
    );
    let metrics = client.metrics();
    assert_eq!((metrics.misses, metrics.hits), (1, 1), "{metrics:?}");
}

#[tokio::test]
async fn many_requests_for_a_new_key_make_one_call_to_keyplane() {
    let (server, node_key, key) = setup().await;
    let client = introspector(&server, &node_key, Mode::Prod, |_| {});
    stream_up(&client).await;
    let before = lookups(&server).await;

    let checks = (0..32).map(|_| {
        let client = client.clone();
        let token = secret(&key).to_owned();
        tokio::spawn(async move { client.check(&token, None, None).await })
    });
    for check in futures_util::future::join_all(checks).await {
        assert!(check.unwrap().is_ok());
    }
    assert_eq!(
        lookups(&server).await - before,
        1,
        "one introspection for 32 concurrent checks"
    );
}

/// How many keys keyplane has looked up, from its metrics page.
async fn lookups(server: &TestServer) -> u64 {
    let text = server.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("keyplane_introspection_cache_lookups_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_revoked_key_is_evicted_by_the_stream_at_once() {
    let (server, node_key, key) = setup().await;
    // A long TTL: only the stream can make the cached answer go away.
    let client = introspector(&server, &node_key, Mode::Prod, |c| {
        c.cache_ttl_cap = Duration::from_secs(3600);
    });
    stream_up(&client).await;
    assert!(client.check(secret(&key), None, None).await.is_ok());

    revoke_and_see_refused(&server, &client, &key).await;
    assert!(client.metrics().evictions >= 1);
}

/// Revokes `key` through the management API and waits until `client` refuses it.
async fn revoke_and_see_refused(server: &TestServer, client: &Introspector, key: &Value) {
    let id = key["id"].as_str().unwrap();
    let (status, _) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    eventually(DEADLINE, "the revoked key to be refused", || async {
        (client.check(secret(key), None, None).await == Err(Refusal::InvalidKey)).then_some(())
    })
    .await;
}

/// Stops keyplane, then answers once the client sees it gone.
async fn stop(server: TestServer, client: &Introspector) {
    server.stop().await.unwrap();
    eventually(
        DEADLINE,
        "the stream to notice keyplane is gone",
        || async { (client.metrics().stream != StreamState::Up).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn prod_fails_closed_once_the_cached_answer_ends() {
    let (server, node_key, key) = setup().await;
    let other = {
        let instance = server.instance("jan-2", &["inference:chat"]).await;
        server
            .key(
                &instance,
                json!({ "name": "k2", "scopes": ["inference:chat"] }),
            )
            .await
    };
    let client = introspector(&server, &node_key, Mode::Prod, |c| {
        c.cache_ttl_cap = Duration::from_secs(3600);
        c.stream_down_ttl = Duration::from_millis(300);
    });
    stream_up(&client).await;
    assert!(client.check(secret(&key), None, None).await.is_ok());
    stop(server, &client).await;

    // A key never seen: nothing to go on.
    assert_eq!(
        client.check(secret(&other), None, None).await,
        Err(Refusal::Unavailable)
    );
    // The cached key: trusted only for the short floor once the stream is down.
    eventually(
        DEADLINE,
        "the cached answer to stop being trusted",
        || async {
            (client.check(secret(&key), None, None).await == Err(Refusal::Unavailable))
                .then_some(())
        },
    )
    .await;
    assert_eq!(client.metrics().stale_serves, 0);
}

#[tokio::test]
async fn mixed_serves_stale_positives_within_the_window_and_never_turns_a_refusal_positive() {
    let (server, node_key, key) = setup().await;
    let instance = server.instance("jan-2", &["inference:chat"]).await;
    let doomed = server
        .key(
            &instance,
            json!({ "name": "doomed", "scopes": ["inference:chat"] }),
        )
        .await;
    let client = Arc::new(introspector(&server, &node_key, Mode::Mixed, |c| {
        c.cache_ttl_cap = Duration::from_millis(200);
        c.negative_ttl = Duration::from_millis(200);
        c.stale_window = Duration::from_secs(600);
    }));
    stream_up(&client).await;
    assert!(client.check(secret(&key), None, None).await.is_ok());
    assert!(client.check(secret(&doomed), None, None).await.is_ok());
    // Revoked while keyplane is up: refused, and that refusal must outlive the outage.
    revoke_and_see_refused(&server, &client, &doomed).await;
    stop(server, &client).await;

    // Past its TTL, the good key is served stale, and counted.
    eventually(DEADLINE, "a stale serve", || async {
        let served = client.check(secret(&key), None, None).await.is_ok();
        (served && client.metrics().stale_serves > 0).then_some(())
    })
    .await;
    let refused = client.check(secret(&doomed), None, None).await;
    assert!(
        matches!(refused, Err(Refusal::InvalidKey | Refusal::Unavailable)),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_bad_configuration_is_refused() {
    let bad_key = Config::new(
        "http://127.0.0.1:1",
        SecretString::from("kpi_nope".to_owned()),
        Mode::Prod,
    );
    assert!(Introspector::start(bad_key).is_err());
}

#[tokio::test]
async fn the_tower_layer_guards_an_axum_service_and_hands_it_the_caller() {
    use axum::routing::post;
    use keyplane_client::{Caller, KeyplaneLayer};
    use keyplane_domain::RouteMap;

    let (server, node_key, key) = setup().await;
    let client = introspector(&server, &node_key, Mode::Prod, |_| {});
    let routes = RouteMap::parse("GET /status=public")
        .unwrap()
        .then(RouteMap::defaults());
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|Caller(caller): Caller| async move { caller.instance_id.to_string() }),
        )
        .route(
            "/v1/models/{name}",
            axum::routing::delete(|| async { "gone" }),
        )
        .route("/status", axum::routing::get(|| async { "up" }))
        .layer(KeyplaneLayer::new(client, routes));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: Option<&str>| {
        let request = http.request(method, format!("{base}{path}"));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };

    let (status, body) = call(Method::POST, "/v1/chat/completions", Some(secret(&key))).await;
    assert_eq!(
        (status, body.as_str()),
        (200, key["instance_id"].as_str().unwrap())
    );
    for (method, path, token, want, code) in [
        (
            Method::POST,
            "/v1/chat/completions",
            None,
            401,
            "invalid_api_key",
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            Some("kpi_nope"),
            401,
            "invalid_api_key",
        ),
        (
            Method::DELETE,
            "/v1/models/llama",
            Some(secret(&key)),
            403,
            "insufficient_scope",
        ),
        (
            Method::GET,
            "/unmapped",
            Some(secret(&key)),
            403,
            "route_not_allowed",
        ),
    ] {
        let (status, body) = call(method.clone(), path, token).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (want, Some(code)),
            "{method} {path}"
        );
        assert!(body["error"]["message"].is_string() && body["error"]["type"].is_string());
    }
    assert_eq!(
        call(Method::GET, "/status", None).await,
        (200, "up".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_replicas_a_lost_one_is_skipped_and_no_revocation_is_missed() {
    let url = crate::support::fresh_database().await;
    let a = TestServer::start_with(crate::support::admin_settings_for(&url)).await;
    let b = TestServer::start_with(crate::support::admin_settings_for(&url)).await;
    let (status, node) = a
        .admin(Method::POST, "/v1/nodes", Some(json!({ "name": "gate-1" })))
        .await;
    assert_eq!(status, 201, "{node}");
    let instance = a.instance("jan-1", &["inference:chat"]).await;
    let issue = || {
        a.key(
            &instance,
            json!({ "name": "k", "scopes": ["inference:chat"] }),
        )
    };
    let (first, second) = (issue().await, issue().await);

    // The first replica named is not there at all.
    let nowhere = format!("http://127.0.0.1:{}", crate::support::free_port());
    let mut config = Config::new(
        format!("{nowhere}, http://{}, http://{}", a.addr, b.addr),
        SecretString::from(node["secret"].as_str().unwrap().to_owned()),
        Mode::Prod,
    );
    config.cache_ttl_cap = Duration::from_secs(3600);
    let client = Introspector::start(config).unwrap();
    assert_eq!(client.endpoints().all().len(), 3);
    assert!(client.check(secret(&first), None, None).await.is_ok());
    stream_up(&client).await;

    // Replica A goes; the key is revoked through B meanwhile.
    a.stop().await.unwrap();
    let (status, _) = b
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", first["id"].as_str().unwrap()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    eventually(
        DEADLINE,
        "the revocation to reach the node through B",
        || async {
            (client.check(secret(&first), None, None).await == Err(Refusal::InvalidKey))
                .then_some(())
        },
    )
    .await;
    assert!(client.base_url().ends_with(&b.addr.port().to_string()));
    // A key never seen before is checked with B.
    assert!(client.check(secret(&second), None, None).await.is_ok());
    eventually(DEADLINE, "the stream to be up again, on B", || async {
        (client.metrics().stream == StreamState::Up).then_some(())
    })
    .await;
    assert!(client.metrics().stream_connects >= 2);
}

/// A stand-in for keyplane whose revocation stream the test writes: it
/// answers every introspection with `key` active, and counts them.
struct StandIn {
    url: String,
    events: tokio::sync::mpsc::UnboundedSender<axum::response::sse::Event>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl StandIn {
    async fn start(key: &Value) -> StandIn {
        use axum::response::sse::{Event, Sse};
        use std::sync::atomic::Ordering;
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let receiver = Arc::new(tokio::sync::Mutex::new(Some(receiver)));
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = json!({
            "active": true, "key_id": key["id"], "client_id": key["instance_id"],
            "scope": "inference:chat", "exp": 4_102_444_800u64, "cache_ttl": 3600,
        });
        let (s, c) = (streams.clone(), calls.clone());
        let app = axum::Router::new()
            .route(
                "/v1/revocations/stream",
                axum::routing::get(move || async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    // Headers at once; then only what the test sends.
                    let receiver = receiver.lock().await.take();
                    let events = futures_util::stream::unfold(receiver, |receiver| async move {
                        let mut receiver = receiver?;
                        let event = receiver.recv().await?;
                        Some((Ok::<_, std::convert::Infallible>(event), Some(receiver)))
                    });
                    Sse::new(events)
                }),
            )
            .route(
                "/v1/introspect",
                axum::routing::post(move || async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    axum::Json(answer)
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        StandIn {
            url,
            events,
            streams,
            calls,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_are_trusted_only_once_the_stream_has_caught_up() {
    use axum::response::sse::Event;
    let (server, node_key, key) = setup().await;
    let stand_in = StandIn::start(&key).await;
    let mut config = Config::new(
        stand_in.url.clone(),
        SecretString::from(node_key),
        Mode::Prod,
    );
    config.stream_down_ttl = Duration::from_millis(300);
    config.cache_ttl_cap = Duration::from_secs(3600);
    let client = Introspector::start(config).unwrap();
    eventually(DEADLINE, "the stream to be opened", || async {
        (stand_in.streams.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    // Connected, but keyplane has not said the replay is over: an answer is
    // trusted only as briefly as while the stream is down, and asked again.
    assert!(client.check(secret(&key), None, None).await.is_ok());
    assert_ne!(client.metrics().stream, StreamState::Up);
    eventually(DEADLINE, "the answer to be asked for again", || async {
        assert!(client.check(secret(&key), None, None).await.is_ok());
        (stand_in.calls() >= 2).then_some(())
    })
    .await;

    // A revocation replayed, then `ready`: the stream is up, answers are
    // trusted for their whole TTL, and the next revocation evicts at once.
    let revoked = |id: &Value| {
        Event::default().event("revocation").id("8").data(
            json!({ "key_id": id, "reason": "revoked", "at": "2026-12-07T00:00:00Z" }).to_string(),
        )
    };
    stand_in
        .events
        .send(revoked(&json!(uuid::Uuid::new_v4())))
        .unwrap();
    stand_in
        .events
        .send(Event::default().event("ready").id("8").data("{}"))
        .unwrap();
    stream_up(&client).await;
    assert!(client.check(secret(&key), None, None).await.is_ok());
    let asked = stand_in.calls();
    for _ in 0..20 {
        assert!(client.check(secret(&key), None, None).await.is_ok());
    }
    assert_eq!(
        stand_in.calls(),
        asked,
        "answers from the cache once caught up"
    );
    stand_in.events.send(revoked(&key["id"])).unwrap();
    eventually(DEADLINE, "the revocation to evict the answer", || async {
        assert!(client.check(secret(&key), None, None).await.is_ok());
        (stand_in.calls() > asked).then_some(())
    })
    .await;
    server.stop().await.unwrap();
}
