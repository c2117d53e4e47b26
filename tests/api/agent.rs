//! `keyplane agent`: enrolls on first start (riding out a keyplane that is
//! not up yet), keeps the key in a 0600 file, rotates it when its
//! `rotate_after` passes, and the old key works only for the grace window.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{TestServer, admin_settings_for, call, eventually, fresh_database};

#[tokio::test]
async fn the_agent_enrolls_rotates_on_time_and_never_logs_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("jan").join("key");
    let log = dir.path().join("agent.log");
    let port = crate::support::free_port();
    let url = fresh_database().await;

    // The token is minted by a first server, which then goes away.
    let setup = TestServer::start_with(admin_settings_for(&url)).await;
    let (status, token) = setup
        .admin(
            Method::POST,
            "/v1/enrollment-tokens",
            Some(json!({"name": "jan fleet", "roles": ["inference-client"], "rotate_after": 3})),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    setup.stop().await.unwrap();
    let enrollment = token["secret"].as_str().unwrap().to_owned();

    // The agent starts while keyplane is down...
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_keyplane"))
        .arg("agent")
        .env("KEYPLANE_URL", format!("http://127.0.0.1:{port}"))
        .env("KEYPLANE_ENROLLMENT_TOKEN", &enrollment)
        .env("KEYPLANE_AGENT_KEY_FILE", &key_file)
        .env("KEYPLANE_AGENT_NAME", "jan-1")
        .env("KEYPLANE_AGENT_CHECK", "200ms")
        .env("KEYPLANE_AGENT_GRACE", "6s")
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("agent.err")).unwrap())
        .spawn()
        .unwrap();
    // ...and enrolls once it is up.
    let server = TestServer::start_with(keyplane_server::Settings {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        ..admin_settings_for(&url)
    })
    .await;
    let read = || {
        std::fs::read_to_string(&key_file)
            .ok()
            .map(|k| k.trim().to_owned())
    };
    let first = eventually(Duration::from_secs(60), "the agent to enroll", || async {
        read()
    })
    .await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (status, me) = call(server.as_(&first, Method::GET, "/v1/self"), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["instance_name"], "jan-1");

    // rotate_after passes: the agent rotates by itself.
    let second = eventually(Duration::from_secs(60), "the agent to rotate", || async {
        read().filter(|key| *key != first)
    })
    .await;
    let (status, old) = call(server.as_(&first, Method::GET, "/v1/self"), None).await;
    assert_eq!(
        (status, old["status"].as_str()),
        (200, Some("rotating")),
        "{old}"
    );
    let (status, new) = call(server.as_(&second, Method::GET, "/v1/self"), None).await;
    assert_eq!(status, 200);
    assert_eq!(new["rotated_from"], me["id"]);
    // The old key stops when its grace window ends.
    eventually(
        Duration::from_secs(60),
        "the old key's grace to end",
        || async {
            (call(server.as_(&first, Method::GET, "/v1/self"), None)
                .await
                .0
                == 401)
                .then_some(())
        },
    )
    .await;
    // Whatever the file holds works (the agent keeps rotating every 3 s).
    let current = read().unwrap();
    assert_eq!(
        call(server.as_(&current, Method::GET, "/v1/self"), None)
            .await
            .0,
        200
    );

    let _ = agent.kill();
    let _ = agent.wait();
    let output = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.path().join("agent.err")).unwrap();
    assert!(
        output.contains("enrolled") && output.contains("rotated"),
        "{output}"
    );
    for secret in [&enrollment, &first, &second, &current] {
        assert!(
            !output.contains(secret.as_str()),
            "the agent logged a whole key"
        );
    }
    server.stop().await.unwrap();
}
