//! Migration off Cortex's static keys: `keyplanectl import cortex` reads a
//! `.cortexrc` as Cortex writes it, registers its `apiKeys` as legacy keys,
//! nodes accept them only where legacy keys are switched on, and a rotation
//! replaces each with a `kpi_` key. No key text is ever shown back.

use chrono::{DateTime, Utc};
use keyplane_client::{Config, Introspector, Refusal};
use keyplane_domain::Mode;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::ctl::{ctl, json};
use crate::support::{BOOTSTRAP, TestServer, admin_settings_for, fresh_database};

const FIRST: &str = "cortex-static-key-first-0001";
const SECOND: &str = "cortex-key-8842";

/// A `.cortexrc` as Cortex writes it: a byte order mark, then YAML with
/// `apiKeys` a list (one key given twice).
fn cortexrc(dir: &std::path::Path) -> String {
    let path = dir.join(".cortexrc");
    let text = format!(
        "\u{feff}logFolderPath: /home/jan/cortexcpp\napiServerHost: 127.0.0.1\n\
         apiServerPort: 39281\nenableCors: true\nallowedOrigins:\n  - http://localhost:39281\n\
         apiKeys:\n  - {FIRST}\n  - {SECOND}\n  - {FIRST}\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn server(accept_legacy_keys: bool) -> TestServer {
    let url = fresh_database().await;
    let mut settings = admin_settings_for(&url);
    settings.accept_legacy_keys = accept_legacy_keys;
    TestServer::start_with(settings).await
}

async fn node(server: &TestServer, name: &str) -> String {
    let (status, node) = server
        .admin(Method::POST, "/v1/nodes", Some(json!({ "name": name })))
        .await;
    assert_eq!(status, 201, "{node}");
    node["secret"].as_str().unwrap().to_owned()
}

async fn introspect(server: &TestServer, node_key: &str, token: &str) -> Value {
    let response = server
        .client
        .post(server.url("/v1/introspect"))
        .bearer_auth(node_key)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn client(server: &TestServer, node_key: &str, accept_legacy_keys: bool) -> Introspector {
    let mut config = Config::new(
        format!("http://{}", server.addr),
        SecretString::from(node_key.to_owned()),
        Mode::Dev,
    );
    config.accept_legacy_keys = accept_legacy_keys;
    Introspector::start(config).unwrap()
}

fn at(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

fn no_key_in(what: &str, text: &str) {
    for key in [FIRST, SECOND] {
        assert!(!text.contains(key), "{what} shows a legacy key: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cortex_keys_are_imported_accepted_where_enabled_and_rotated_into_kpi_keys() {
    let server = server(true).await;
    let node_key = node(&server, "cortex-1").await;
    let instance = server
        .instance("jan-cortex", &["inference:chat", "models:read"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = cortexrc(dir.path());
    let url = server.url("");
    let env = [
        ("KEYPLANE_URL", url.as_str()),
        ("KEYPLANE_TOKEN", BOOTSTRAP),
        ("XDG_CONFIG_HOME", dir.path().to_str().unwrap()),
    ];

    // A dry run changes nothing.
    let (code, out, err) = ctl(
        &env,
        &[
            "import",
            "cortex",
            "--config",
            &config,
            "--instance",
            "jan-cortex",
            "--dry-run",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    no_key_in("a dry run", &(out.clone() + &err));
    assert_eq!(json(&out)["dry_run"], true);

    let (code, out, err) = ctl(
        &env,
        &[
            "import",
            "cortex",
            "--config",
            &config,
            "--instance",
            "jan-cortex",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    no_key_in("the import", &(out.clone() + &err));
    let imported = json(&out);
    let items = imported["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{imported}");
    assert!(
        imported["warnings"][0]
            .as_str()
            .unwrap()
            .contains("given twice"),
        "{imported}"
    );
    for item in items {
        assert_eq!(item["legacy"], true);
        assert_eq!(item["instance_id"], instance.as_str());
        assert!(item["masked_key"].as_str().unwrap().starts_with("legacy…"));
        // The whole ceiling, as the static key could do everything.
        assert_eq!(item["scopes"], json!(["inference:chat", "models:read"]));
        let life = at(&item["expires_at"]) - at(&item["created_at"]);
        assert_eq!(life.num_days(), 30, "{item}");
        assert!(at(&item["rotation_due_at"]) < at(&item["expires_at"]));
    }
    assert_eq!(items[0]["name"], "legacy 1");
    assert_eq!(items[0]["masked_key"], "legacy…0001");
    // Too short to show any of it.
    assert_eq!(items[1]["masked_key"], "legacy…");

    // The table says which keys are legacy, and when to rotate them.
    let (code, table, err) = ctl(&env, &["keys", "list", "--legacy", "true"]);
    assert_eq!(code, 0, "{err}");
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("LEGACY") && header.contains("ROTATION_DUE_AT"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "{table}");

    // Nodes accept them; a node's library sends them only when told to.
    let answer = introspect(&server, &node_key, FIRST).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["client_id"], instance.as_str());
    let strict = client(&server, &node_key, false);
    assert_eq!(
        strict.check(FIRST, None, None).await,
        Err(Refusal::InvalidKey)
    );
    assert_eq!(strict.metrics().offline_rejects, 1);
    let lenient = client(&server, &node_key, true);
    let identity = lenient
        .check(SECOND, Some("models:read"), None)
        .await
        .unwrap();
    assert_eq!(identity.instance_name, "jan-cortex");
    assert_eq!(
        lenient.check("not-a-registered-key", None, None).await,
        Err(Refusal::InvalidKey)
    );

    // Importing a key again is refused, and names it only masked.
    let (code, out, err) = ctl(
        &env,
        &[
            "import",
            "cortex",
            "--config",
            &config,
            "--instance",
            "jan-cortex",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("already registered"), "{err}");
    no_key_in("a refusal", &(out + &err));

    // Rotating a legacy key replaces it with a kpi_ key under the full policy.
    let legacy_id = items[0]["id"].as_str().unwrap();
    let (status, successor) = server
        .admin(
            Method::POST,
            &format!("/v1/keys/{legacy_id}/rotate"),
            Some(json!({ "grace_seconds": 0 })),
        )
        .await;
    assert_eq!(status, 201, "{successor}");
    assert_eq!(successor["legacy"], false);
    assert!(successor["secret"].as_str().unwrap().starts_with("kpi_"));
    let life = at(&successor["expires_at"]) - at(&successor["created_at"]);
    assert_eq!(life.num_days(), 90);
    let answer = introspect(&server, &node_key, FIRST).await;
    assert_eq!(answer, json!({ "active": false }));
    let answer = introspect(&server, &node_key, successor["secret"].as_str().unwrap()).await;
    assert_eq!(answer["active"], true);

    // Every import is audited, masked.
    let (status, audit) = server
        .admin(Method::GET, "/v1/audit?action=key.import", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(audit["items"].as_array().unwrap().len(), 2, "{audit}");
    let export = server
        .as_(BOOTSTRAP, Method::GET, "/v1/audit/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    no_key_in("the audit log", &export);

    // /healthz says legacy keys are accepted, until they are turned off.
    let (_, health) = server.admin(Method::GET, "/healthz", None).await;
    assert!(
        health["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "legacy_keys"),
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_keys_are_refused_where_not_switched_on_and_bad_imports_say_why() {
    let server = server(false).await;
    let node_key = node(&server, "cortex-2").await;
    let instance = server.instance("jan-off", &["inference:chat"]).await;
    let import = |body: Value| {
        let path = format!("/v1/instances/{instance}/keys/import");
        let server = &server;
        async move { server.admin(Method::POST, &path, Some(body)).await }
    };

    let (status, imported) = import(json!({ "keys": [FIRST] })).await;
    assert_eq!(status, 201, "{imported}");
    assert!(
        imported["warnings"][0]
            .as_str()
            .unwrap()
            .contains("KEYPLANE_ACCEPT_LEGACY_KEYS"),
        "{imported}"
    );
    assert_eq!(imported["items"][0]["name"], "legacy");
    // Registered, yet never looked up while legacy keys are off.
    let answer = introspect(&server, &node_key, FIRST).await;
    assert_eq!(answer, json!({ "active": false }));

    // Bad input: a refusal that names the field, never the key.
    for (body, field) in [
        (json!({ "keys": [] }), "keys"),
        (json!({ "keys": [SECOND, "short"] }), "keys[1]"),
        (
            json!({ "keys": [SECOND, "kpi_not-a-legacy-key-at-all"] }),
            "keys[1]",
        ),
        (
            json!({ "keys": [SECOND, "with a space inside"] }),
            "keys[1]",
        ),
        (
            json!({ "keys": [SECOND], "scopes": ["models:read"] }),
            "scopes",
        ),
        (json!({ "keys": [SECOND], "expires_in": 0 }), "expires_in"),
    ] {
        let (status, problem) = import(body.clone()).await;
        assert!(status == 400 || status == 422, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
        no_key_in("a problem", &problem.to_string());
    }
    // Longer than the legacy policy: capped in dev, with a warning.
    let (status, capped) = import(json!({ "keys": [SECOND], "expires_in": 60 * 86_400 })).await;
    assert_eq!(status, 201, "{capped}");
    let life = at(&capped["items"][0]["expires_at"]) - at(&capped["items"][0]["created_at"]);
    assert_eq!(life.num_days(), 30);
    assert!(capped["warnings"][0].as_str().unwrap().contains("capped"));

    let dir = tempfile::tempdir().unwrap();
    let url = server.url("");
    let env = [
        ("KEYPLANE_URL", url.as_str()),
        ("KEYPLANE_TOKEN", BOOTSTRAP),
        ("XDG_CONFIG_HOME", dir.path().to_str().unwrap()),
    ];
    let config = cortexrc(dir.path());
    let (code, _, err) = ctl(
        &env,
        &[
            "import",
            "cortex",
            "--config",
            &config,
            "--instance",
            "no-such-instance",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no instance named"), "{err}");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, format!("apiKeys: [\"{FIRST}\"\nnext: [")).unwrap();
    let (code, _, err) = ctl(
        &env,
        &[
            "import",
            "cortex",
            "--config",
            broken.to_str().unwrap(),
            "--instance",
            "jan-off",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is not YAML") && err.lines().count() == 1,
        "{err}"
    );
    no_key_in("a usage error", &err);
}
