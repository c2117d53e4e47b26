//! A year and more of operation, uneventful: keyplane on a clock the test
//! moves a day at a time through 400 days, a gate that rotates its own node
//! key, an nginx node whose key `keyplane agent --node` rotates (rewriting
//! nginx's include file and reloading it), an instance whose API key
//! `keyplane agent` rotates, and an operator who rotates their admin key
//! and their webhook's secret when they are due. Requests flow through the gate and nginx the whole time;
//! not one may fail. Every credential rotates on schedule (keyplane's own
//! signing keys too), and a credential left to expire is warned of once at
//! 14, 7 and 1 days.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyplane_server::clock::Clock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    Gate, Nginx, TestServer, admin_settings_for, call, eventually, fresh_database, stub_upstream,
};

const DAYS: i64 = 400;
/// The longest any one day may take to settle (rotations included).
const SETTLE: Duration = Duration::from_secs(60);

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the requests saw: successes with the key they used, and failures.
#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Successes with the instance key now in the agent's file.
    ok_with_current: AtomicU64,
    last_failure: std::sync::Mutex<Option<String>>,
}

fn at(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_days_pass_without_one_request_failing_for_a_credential() {
    let settings = keyplane_server::Settings {
        scheduler_interval: Duration::from_millis(100),
        metrics_refresh: Duration::from_millis(100),
        ..admin_settings_for(&fresh_database().await)
    };
    let (server, clock) = TestServer::start_with_clock(settings).await;
    let keyplane = format!("http://{}", server.addr);
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // Operators hear of expiries.
    let (receiver, _receiving, hook) = server
        .subscribe(&["credential.expiring", "key.expiring"])
        .await;
    let hook_path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());

    // The operator's own admin key, rotated when due; and one nobody
    // rotates, warned of at 14, 7 and 1 days before it expires.
    let admin_key = |name: &'static str, days: i64| {
        let server = &server;
        async move {
            let (status, body) = server
                .admin(
                    Method::POST,
                    "/v1/admin-keys",
                    Some(json!({"name": name, "role": "admin", "expires_in": days * 86_400})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            body
        }
    };
    let mut operator = admin_key("ops", 90).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let forgotten = admin_key("forgotten", 30).await;
    let as_operator = |token: &str, method: Method, path: &str, body: Option<Value>| {
        call(server.as_(token, method, path), body)
    };

    // Two nodes: a gate, and nginx.
    let node = |name: &'static str| {
        let (operator, as_operator) = (&operator, &as_operator);
        async move {
            let (status, body) = as_operator(
                operator,
                Method::POST,
                "/v1/nodes",
                Some(json!({"name": name})),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            body
        }
    };
    let gate_node = node("gate-1").await;
    let nginx_node = node("nginx-1").await;
    keyplane_client::write_private(
        &path("gate.key"),
        format!("{}\n", gate_node["secret"].as_str().unwrap()).as_bytes(),
    )
    .unwrap();

    // The instance enrolls through its agent, and rotates every 30 days.
    let (status, token) = as_operator(
        &operator,
        Method::POST,
        "/v1/enrollment-tokens",
        Some(json!({"name": "jan", "roles": ["inference-client"], "rotate_after": 30 * 86_400})),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let agent = |envs: &[(&str, &str)], log: &str| {
        Running(
            Command::new(env!("CARGO_BIN_EXE_keyplane"))
                .arg("agent")
                .env("KEYPLANE_URL", &keyplane)
                .env("KEYPLANE_AGENT_CHECK", "100ms")
                .envs(envs.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(path(log)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let instance_key_file = path("jan.key");
    let _instance_agent = agent(
        &[
            (
                "KEYPLANE_ENROLLMENT_TOKEN",
                token["secret"].as_str().unwrap(),
            ),
            (
                "KEYPLANE_AGENT_KEY_FILE",
                instance_key_file.to_str().unwrap(),
            ),
            ("KEYPLANE_AGENT_NAME", "jan-1"),
        ],
        "instance-agent.log",
    );
    let read_instance_key = || {
        std::fs::read_to_string(&instance_key_file)
            .ok()
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
    };
    eventually(SETTLE, "the instance to enroll", || async {
        read_instance_key()
    })
    .await;

    // The gate keeps its key in a file and rotates it itself.
    let upstream = stub_upstream().await;
    let gate = Gate::start(
        &[
            ("KEYPLANE_URL", &keyplane),
            ("KEYPLANE_NODE_KEY_FILE", path("gate.key").to_str().unwrap()),
            ("KEYPLANE_GATE_UPSTREAM", &upstream),
            ("KEYPLANE_GATE_HEARTBEAT", "1s"),
        ],
        std::fs::File::create(path("gate.log")).unwrap().into(),
    )
    .await;

    // The nginx node's key is kept by the agent, which writes nginx's
    // include file and reloads nginx after each rotation.
    let include = path("keyplane-node-key.conf");
    let upstream_addr = upstream.trim_start_matches("http://").to_owned();
    let nginx_dir = dir.path().to_owned();
    // The agent writes the include first; nginx starts once it exists.
    let reload_later = path("reload.sh");
    std::fs::write(
        &reload_later,
        "#!/bin/sh\n[ -f \"$0.cmd\" ] && sh \"$0.cmd\"\nexit 0\n",
    )
    .unwrap();
    let _node_agent = agent(
        &[
            ("KEYPLANE_AGENT_NODE", "true"),
            ("KEYPLANE_NODE_KEY", nginx_node["secret"].as_str().unwrap()),
            (
                "KEYPLANE_AGENT_KEY_FILE",
                path("nginx.key").to_str().unwrap(),
            ),
            ("KEYPLANE_AGENT_NGINX_INCLUDE", include.to_str().unwrap()),
            (
                "KEYPLANE_AGENT_RELOAD",
                &format!("sh {}", reload_later.display()),
            ),
        ],
        "node-agent.log",
    );
    eventually(SETTLE, "the agent to write nginx's include", || async {
        include.exists().then_some(())
    })
    .await;
    let nginx = Nginx::start(&nginx_dir, &server.addr.to_string(), &upstream_addr).await;
    std::fs::write(path("reload.sh.cmd"), &nginx.reload).unwrap();

    // Requests flow through both the whole time.
    let traffic = Arc::new(Traffic::default());
    let running = Arc::new(AtomicBool::new(true));
    let requests = tokio::spawn({
        let (traffic, running) = (traffic.clone(), running.clone());
        let targets = [gate.base.clone(), nginx.base.clone()];
        let key_file = instance_key_file.clone();
        async move {
            // A new connection for each request: one kept alive to an nginx
            // worker that a reload retires could be closed under a request,
            // which is no credential's doing.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            while running.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let Some(key) = std::fs::read_to_string(&key_file)
                    .ok()
                    .map(|k| k.trim().to_owned())
                else {
                    continue;
                };
                for target in &targets {
                    let sent = client
                        .post(format!("{target}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&json!({"model": "m", "messages": []}))
                        .send()
                        .await;
                    let status = sent.map(|r| r.status().as_u16()).unwrap_or(0);
                    if status == 200 {
                        traffic.ok.fetch_add(1, Ordering::Relaxed);
                        let current =
                            std::fs::read_to_string(&key_file).is_ok_and(|now| now.trim() == key);
                        if current {
                            traffic.ok_with_current.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        traffic.failed.fetch_add(1, Ordering::Relaxed);
                        *traffic.last_failure.lock().unwrap() =
                            Some(format!("{status} from {target} at {}", Utc::now()));
                    }
                }
            }
        }
    });

    let node_settled = |id: Value, now: DateTime<Utc>| {
        let server = &server;
        async move {
            let path = format!("/v1/nodes/{}", id.as_str().unwrap());
            let (_, node) = server.admin(Method::GET, &path, None).await;
            (at(&node["rotation_due_at"]) > now && node["key_used_at"].is_string()).then_some(())
        }
    };
    for day in 1..=DAYS {
        clock.advance(chrono::Duration::days(1));
        let now = clock.now();
        // The operator rotates their own key when it is due.
        let (_, own) = as_operator(&operator, Method::GET, "/v1/admin-keys/self", None).await;
        if at(&own["rotation_due_at"]) <= now {
            let (status, rotated) = as_operator(
                &operator,
                Method::POST,
                "/v1/admin-keys/self/rotate",
                Some(json!({"grace_seconds": 600})),
            )
            .await;
            assert_eq!(status, 201, "day {day}: {rotated}");
            operator = rotated["secret"].as_str().unwrap().to_owned();
        }
        // And their webhook's signing secret, four fifths into its life.
        let (_, hooks) = as_operator(&operator, Method::GET, "/v1/webhooks", None).await;
        if at(&hooks["items"][0]["secret_expires_at"]) <= now + chrono::Duration::days(18) {
            let path = format!("{hook_path}/rotate-secret");
            let (status, _) = as_operator(&operator, Method::POST, &path, None).await;
            assert_eq!(status, 201, "day {day}");
        }
        // Every due rotation is made, and its new key in use, before the
        // next day dawns.
        let what = format!("day {day} to settle");
        eventually(SETTLE, &what, || node_settled(gate_node["id"].clone(), now)).await;
        eventually(SETTLE, &what, || {
            node_settled(nginx_node["id"].clone(), now)
        })
        .await;
        eventually(SETTLE, &what, || async {
            let key = read_instance_key()?;
            let (status, me) = call(server.as_(&key, Method::GET, "/v1/self"), None).await;
            (status == 200 && me["rotation_due"] == false).then_some(())
        })
        .await;
        // The scheduler has looked at this day (its warnings are due by day).
        eventually(SETTLE, &what, || async {
            let metrics = server.get("/metrics").await.text().await.unwrap();
            let ran = metrics
                .lines()
                .find_map(|l| l.strip_prefix("keyplane_scheduler_last_run_timestamp_seconds "))
                .and_then(|v| v.parse::<i64>().ok())?;
            (ran >= now.timestamp()).then_some(())
        })
        .await;
        let before = traffic.ok_with_current.load(Ordering::Relaxed);
        eventually(SETTLE, &what, || async {
            (traffic.ok_with_current.load(Ordering::Relaxed) >= before + 2).then_some(())
        })
        .await;
    }
    running.store(false, Ordering::Relaxed);
    requests.await.unwrap();

    let failed = traffic.failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "requests failed; the last: {:?}",
        traffic.last_failure.lock().unwrap()
    );
    assert!(traffic.ok.load(Ordering::Relaxed) > 2 * DAYS as u64);

    // Every credential rotated on schedule: a 90-day key at 72 days, the
    // instance's key every 30.
    let rotations = |action: &'static str| {
        let server = &server;
        async move {
            let path = format!("/v1/audit?action={action}&limit=500");
            let (_, page) = server.admin(Method::GET, &path, None).await;
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|entry| entry["outcome"] == "success")
                .map(|entry| entry["target_id"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<String>>()
        }
    };
    let nodes = rotations("node.rotate").await;
    for node in [&gate_node, &nginx_node] {
        let times = nodes.iter().filter(|id| node["id"] == **id).count();
        assert_eq!(
            times,
            (DAYS / 72) as usize,
            "{} rotated {times} times",
            node["name"]
        );
    }
    assert_eq!(
        rotations("admin_key.rotate").await.len(),
        (DAYS / 72) as usize
    );
    assert_eq!(rotations("key.rotate").await.len(), (DAYS / 30) as usize);
    assert_eq!(
        rotations("webhook.rotate_secret").await.len(),
        (DAYS / 72) as usize
    );
    // Signing keys renew every 30 days, each published a day ahead.
    assert_eq!(
        rotations("signing_key.renew").await.len(),
        (DAYS / 30) as usize
    );

    // The one credential left to expire was warned of once at each
    // threshold; nothing that rotated was warned of.
    let warnings = eventually(SETTLE, "the forgotten key's warnings", || async {
        let got = receiver.of("credential.expiring");
        (got.len() >= 3).then_some(got)
    })
    .await;
    let days: Vec<i64> = warnings
        .iter()
        .map(|w| {
            assert_eq!(w["data"]["id"], forgotten["id"], "{w}");
            w["data"]["days_left"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(days, [14, 7, 1]);
    assert!(receiver.of("key.expiring").is_empty());
}
