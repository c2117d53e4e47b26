//! Usage reports from nodes, the rollups operators read, and budget leases.

use chrono::{DateTime, Duration, DurationRound, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, call};

struct Fleet {
    server: TestServer,
    instance: String,
    key_id: String,
    secret: String,
    /// Was answered about the key.
    seen: String,
    /// Never was.
    stranger: String,
}

async fn fleet(key_limits: Value) -> Fleet {
    fleet_on(TestServer::start_admin().await, key_limits).await
}

async fn fleet_on(server: TestServer, key_limits: Value) -> Fleet {
    let instance = server.instance("jan-1", &["inference:chat"]).await;
    let key = server
        .key(
            &instance,
            json!({"name": "k", "scopes": ["inference:chat"], "limits": key_limits}),
        )
        .await;
    let mut node_keys = Vec::new();
    for name in ["gate-1", "gate-2"] {
        let (status, node) = server
            .admin(Method::POST, "/v1/nodes", Some(json!({ "name": name })))
            .await;
        assert_eq!(status, 201, "{node}");
        node_keys.push(node["secret"].as_str().unwrap().to_owned());
    }
    let fleet = Fleet {
        instance,
        key_id: key["id"].as_str().unwrap().to_owned(),
        secret: key["secret"].as_str().unwrap().to_owned(),
        stranger: node_keys.pop().unwrap(),
        seen: node_keys.pop().unwrap(),
        server,
    };
    fleet.introspect(&fleet.seen).await;
    fleet
}

impl Fleet {
    async fn introspect(&self, node_key: &str) {
        let response = self
            .server
            .client
            .post(self.server.url("/v1/introspect"))
            .bearer_auth(node_key)
            .form(&[("token", self.secret.as_str())])
            .send()
            .await
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["active"], true, "{answer}");
    }

    async fn report(&self, node_key: &str, items: Value) -> (u16, Value) {
        call(
            self.server.as_(node_key, Method::POST, "/v1/usage/reports"),
            Some(json!({ "items": items })),
        )
        .await
    }

    async fn lease(&self, node_key: &str, tokens: i64) -> Value {
        let (status, lease) = call(
            self.server.as_(node_key, Method::POST, "/v1/usage/leases"),
            Some(json!({"key_id": self.key_id, "tokens": tokens})),
        )
        .await;
        assert_eq!(status, 200, "{lease}");
        lease
    }

    async fn usage(&self, query: &str) -> Value {
        let (status, usage) = self
            .server
            .admin(Method::GET, &format!("/v1/usage?{query}"), None)
            .await;
        assert_eq!(status, 200, "{usage}");
        usage
    }
}

fn minute() -> DateTime<Utc> {
    Utc::now().duration_trunc(Duration::minutes(1)).unwrap()
}

fn item(key_id: &str, model: &str, prompt: i64, completion: i64) -> Value {
    json!({"key_id": key_id, "model": model, "minute": minute(), "requests": 1,
           "prompt_tokens": prompt, "completion_tokens": completion, "errors": 0})
}

#[tokio::test]
async fn reports_roll_up_and_a_node_reports_only_keys_it_saw() {
    let f = fleet(json!({})).await;
    let (status, answer) = f
        .report(
            &f.seen,
            json!([
                item(&f.key_id, "llama3", 10, 20),
                item(&f.key_id, "llama3", 5, 5),
                item(&f.key_id, "phi3", 1, 2)
            ]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"accepted": 3, "refused": []}));

    // A node that was never answered about the key cannot charge it.
    let (status, answer) = f
        .report(
            &f.stranger,
            json!([item(&f.key_id, "llama3", 1_000_000, 0)]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["refused"][0]["reason"], "key_not_seen");
    let audit = crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the refusal's audit entry",
        || async {
            let (_, audit) = f
                .server
                .admin(Method::GET, "/v1/audit?action=usage.report", None)
                .await;
            (audit["items"].as_array()?.len() == 1).then_some(audit)
        },
    )
    .await;
    let entry = &audit["items"][0];
    assert_eq!(entry["outcome"], "denied");
    assert_eq!(entry["details"]["key_ids"], json!([f.key_id]));
    assert!(!audit.to_string().contains(&f.secret));

    let hourly = f.usage(&format!("key_id={}", f.key_id)).await;
    let rows = hourly["items"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{hourly}");
    let llama = rows.iter().find(|r| r["model"] == "llama3").unwrap();
    assert_eq!(
        (
            &llama["requests"],
            &llama["prompt_tokens"],
            &llama["completion_tokens"]
        ),
        (&json!(2), &json!(15), &json!(25))
    );
    assert_eq!(llama["instance_id"], f.instance.as_str());
    assert_eq!(
        llama["bucket_start"].as_str().unwrap(),
        minute()
            .duration_trunc(Duration::hours(1))
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let daily = f
        .usage(&format!("instance_id={}&model=phi3&bucket=day", f.instance))
        .await;
    assert_eq!(daily["items"].as_array().unwrap().len(), 1, "{daily}");
    assert_eq!(daily["truncated"], false);
    let none = f.usage(&format!("key_id={}", uuid::Uuid::new_v4())).await;
    assert_eq!(none["items"], json!([]));
}

#[tokio::test]
async fn metrics_show_the_busiest_instances_recent_usage() {
    let url = crate::support::fresh_database().await;
    let settings = keyplane_server::Settings {
        metrics_refresh: std::time::Duration::from_millis(200),
        ..crate::support::admin_settings_for(&url)
    };
    let f = fleet_on(TestServer::start_with(settings).await, json!({})).await;
    let (status, answer) = f
        .report(
            &f.seen,
            json!([
                item(&f.key_id, "llama3", 10, 20),
                item(&f.key_id, "phi3", 1, 2)
            ]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let labels = format!("instance_id=\"{}\",instance=\"jan-1\"", f.instance);
    // The database's figures are read in the background, not at scrape time.
    let text = crate::support::eventually(
        std::time::Duration::from_secs(30),
        "the usage gauges",
        || async {
            let text = f.server.get("/metrics").await.text().await.ok()?;
            text.contains(&format!("keyplane_usage_tokens_recent{{{labels}}} 33"))
                .then_some(text)
        },
    )
    .await;
    assert!(
        text.contains(&format!("keyplane_usage_requests_recent{{{labels}}} 2")),
        "{text}"
    );
    assert!(!text.contains(&f.secret) && !text.contains(&f.seen));
}

#[tokio::test]
async fn bad_reports_and_queries_are_refused_by_field() {
    let f = fleet(json!({})).await;
    let good = item(&f.key_id, "m", 1, 1);
    let with = |field: &str, value: Value| {
        let mut item = good.clone();
        item[field] = value;
        json!([item])
    };
    for (items, field) in [
        (json!([]), "items"),
        (with("requests", json!(-1)), "items[0].requests"),
        (
            with("prompt_tokens", json!(10_000_000_000_000_i64)),
            "items[0].prompt_tokens",
        ),
        (
            with("minute", json!(Utc::now() - Duration::days(3))),
            "items[0].minute",
        ),
        (
            with("minute", json!(Utc::now() + Duration::hours(2))),
            "items[0].minute",
        ),
        (with("model", json!("m".repeat(200))), "items[0].model"),
        (with("model", json!(f.secret)), "items[0].model"),
    ] {
        let (status, body) = f.report(&f.seen, items).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], field, "{body}");
        assert!(!body.to_string().contains(&f.secret), "{body}");
    }
    let too_many: Vec<Value> = (0..151).map(|_| good.clone()).collect();
    let (status, body) = f.report(&f.seen, json!(too_many)).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("items")));
    // Operators' credentials are not nodes'.
    let (status, _) = f
        .server
        .admin(
            Method::POST,
            "/v1/usage/reports",
            Some(json!({"items": [good]})),
        )
        .await;
    assert_eq!(status, 401);

    for (query, field) in [
        ("bucket=week", None),
        ("limit=0", Some("limit")),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            Some("from"),
        ),
    ] {
        let (status, body) = f
            .server
            .admin(Method::GET, &format!("/v1/usage?{query}"), None)
            .await;
        assert!(status == 400 || status == 422, "{query}: {status} {body}");
        if let Some(field) = field {
            assert_eq!(body["field"], field, "{body}");
        }
    }
}

#[tokio::test]
async fn a_flood_of_models_cannot_grow_the_rollups_without_bound() {
    let f = fleet(json!({})).await;
    for round in 0..3 {
        let items: Vec<Value> = (0..150)
            .map(|i| item(&f.key_id, &format!("model-{round}-{i:04}"), 1, 0))
            .collect();
        let (status, answer) = f.report(&f.seen, json!(items)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], 150);
    }
    let usage = f.usage(&format!("key_id={}&limit=10000", f.key_id)).await;
    let rows = usage["items"].as_array().unwrap();
    // 50 models kept, the rest summed as one: nothing lost, little stored.
    assert_eq!(rows.len(), 51, "{} rows", rows.len());
    let other = rows.iter().find(|r| r["model"] == "(other)").unwrap();
    assert_eq!(other["requests"], 450 - 50);
    let total: i64 = rows
        .iter()
        .map(|r| r["prompt_tokens"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 450);
}

#[tokio::test]
async fn leases_never_grant_a_budget_twice() {
    let f = fleet(json!({"daily_tokens": 10_000, "monthly_tokens": 50_000})).await;
    f.introspect(&f.stranger).await;
    let (a, b) = (&f.seen, &f.stranger);

    // A slice of the budget (a twentieth, at least a thousand), or what was asked.
    let first = f.lease(a, 10).await;
    assert_eq!(first["granted"], 1000, "{first}");
    assert_eq!(first["daily_remaining"], 9000);
    assert_eq!(first["monthly_remaining"], 49_000);
    let big = f.lease(b, 8500).await;
    assert_eq!(big["granted"], 8500, "{big}");
    // A's new lease replaces its old one; B's 8500 stay held.
    let second = f.lease(a, 100).await;
    assert_eq!(second["granted"], 1000, "{second}");
    assert_eq!(second["daily_remaining"], 500);
    // B reports spending 8000 of its 8500: 500 still held.
    let (status, _) = f.report(b, json!([item(&f.key_id, "m", 6000, 2000)])).await;
    assert_eq!(status, 200);
    let third = f.lease(a, 5000).await;
    assert_eq!(third["granted"], 1500, "{third}");
    assert_eq!(third["daily_remaining"], 0);
    let fourth = f.lease(b, 100).await;
    assert_eq!(fourth["granted"], 500, "{fourth}");
    // Spent and held add up to the budget, never more.
    let again = f.lease(a, 2000).await;
    assert_eq!(
        again["granted"], 1500,
        "A's own lease is replaced, never added to: {again}"
    );
    // A node that never saw the key gets no lease.
    let (_, node) = f
        .server
        .admin(Method::POST, "/v1/nodes", Some(json!({"name": "gate-3"})))
        .await;
    let (status, body) = call(
        f.server.as_(
            node["secret"].as_str().unwrap(),
            Method::POST,
            "/v1/usage/leases",
        ),
        Some(json!({"key_id": f.key_id, "tokens": 10})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    for tokens in [0, -5] {
        let (status, body) = call(
            f.server.as_(a, Method::POST, "/v1/usage/leases"),
            Some(json!({"key_id": f.key_id, "tokens": tokens})),
        )
        .await;
        assert_eq!((status, body["field"].as_str()), (422, Some("tokens")));
    }
    // A revoked key's budget is closed.
    let (status, _) = f
        .server
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/revoke", f.key_id),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(f.lease(a, 10).await["granted"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_limits_and_read_usage_with_keyplanectl() {
    let f = fleet(json!({})).await;
    let (status, _) = f
        .report(&f.seen, json!([item(&f.key_id, "llama3", 7, 3)]))
        .await;
    assert_eq!(status, 200);
    let url = f.server.url("");
    let config = tempfile::tempdir().unwrap();
    let env = [
        ("KEYPLANE_URL", url.as_str()),
        ("KEYPLANE_TOKEN", crate::support::BOOTSTRAP),
        ("XDG_CONFIG_HOME", config.path().to_str().unwrap()),
    ];
    let run = |args: &[&str]| {
        let (code, out, err) = crate::ctl::ctl(&env, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    let updated: Value = serde_json::from_str(&run(&[
        "keys",
        "update",
        &f.key_id,
        "--limits",
        "rpm=60,daily_tokens=100000",
        "--models",
        "llama3*,phi3",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(updated["limits"]["rpm"], 60);
    assert_eq!(updated["limits"]["daily_tokens"], 100_000);
    assert_eq!(updated["models"], json!(["llama3*", "phi3"]));
    let usage: Value = serde_json::from_str(&run(&[
        "usage", "--key-id", &f.key_id, "--bucket", "day", "-o", "json",
    ]))
    .unwrap();
    assert_eq!(usage["items"][0]["prompt_tokens"], 7, "{usage}");
    let table = run(&["usage", "--instance-id", &f.instance]);
    assert!(table.contains("llama3"), "{table}");
    let (code, _, err) =
        crate::ctl::ctl(&env, &["keys", "update", &f.key_id, "--limits", "rpm=-1"]);
    assert_ne!(code, 0);
    assert!(err.contains("limits.rpm"), "{err}");
}
