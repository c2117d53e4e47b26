//! `keyplane serve` with no DATABASE_URL: the embedded PostgreSQL, for real,
//! through the binary a newcomer runs.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{BOOTSTRAP, eventually, free_port};

struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    fn start(data_dir: &std::path::Path) -> Serve {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_keyplane"))
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env_remove("KEYPLANE_MODE")
            .env("KEYPLANE_DATA_DIR", data_dir)
            .env("KEYPLANE_BOOTSTRAP_TOKEN", BOOTSTRAP)
            .env("KEYPLANE_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("keyplane serve starts");
        Serve {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&self) -> Value {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.base);
        eventually(
            Duration::from_secs(180),
            "the embedded server to be ready",
            || {
                let request = client.get(&url).send();
                async move {
                    let response = request.await.ok()?;
                    if response.status() != 200 {
                        return None;
                    }
                    response.json::<Value>().await.ok()
                }
            },
        )
        .await
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        self.child.wait().expect("keyplane exits")
    }
}

#[tokio::test]
async fn dev_mode_without_a_database_url_keeps_its_data_across_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();

    let first = Serve::start(data_dir.path());
    let before = first.ready().await;
    assert_eq!(before["status"], "ready");
    let health: Value = reqwest::get(format!("{}/healthz", first.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["mode"], "dev");

    // The management API and introspection on the embedded database, where
    // change events travel in-process (one connection, no LISTEN).
    let client = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: String, body: Value| {
        client
            .request(method, format!("{}{path}", first.base))
            .bearer_auth(BOOTSTRAP)
            .json(&body)
            .send()
    };
    let instance: Value = admin(
        reqwest::Method::POST,
        "/v1/instances".into(),
        json!({"name": "jan-embedded"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let instance_id = instance["id"].as_str().unwrap().to_owned();
    let node: Value = admin(
        reqwest::Method::POST,
        "/v1/nodes".into(),
        json!({"name": "cortex"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let key: Value = admin(
        reqwest::Method::POST,
        format!("/v1/instances/{instance_id}/keys"),
        json!({"name": "k", "roles": ["inference-client"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let introspect = || {
        client
            .post(format!("{}/v1/introspect", first.base))
            .bearer_auth(node["secret"].as_str().unwrap())
            .form(&[("token", key["secret"].as_str().unwrap())])
            .send()
    };
    let answer: Value = introspect().await.unwrap().json().await.unwrap();
    assert_eq!(answer["active"], true);
    let revoked = admin(
        reqwest::Method::POST,
        format!("/v1/keys/{}/revoke", key["id"].as_str().unwrap()),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(revoked.status(), 200);
    let answer: Value = introspect().await.unwrap().json().await.unwrap();
    assert_eq!(
        answer,
        json!({"active": false}),
        "the cached answer died with the revocation"
    );

    assert!(
        first.terminate().success(),
        "keyplane exits cleanly on SIGTERM"
    );

    let second = Serve::start(data_dir.path());
    let after = second.ready().await;
    assert_eq!(
        after["deployment_id"], before["deployment_id"],
        "the same data after a restart"
    );
    let keys: Value = client
        .get(format!("{}/v1/keys?instance_id={instance_id}", second.base))
        .bearer_auth(BOOTSTRAP)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys["items"][0]["id"], key["id"],
        "the key survived the restart: {keys}"
    );
    assert_eq!(keys["items"][0]["status"], "revoked");
    assert!(second.terminate().success());
}

#[tokio::test]
async fn the_embedded_database_answers_only_to_keyplanes_own_user() {
    use std::os::unix::fs::PermissionsExt;
    let data_dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(data_dir.path());
    serve.ready().await;
    // PGlite asks for no password: it listens on a Unix socket in a
    // directory only keyplane's user may enter, and on no TCP port.
    let data = data_dir.path();
    let socket_dir = data.join("socket");
    let socket = socket_dir.join(".s.PGSQL.5432");
    assert!(socket.exists(), "the server's socket");
    for private in [data, socket_dir.as_path()] {
        let mode = std::fs::metadata(private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is mode {mode:o}", private.display());
    }
    // Another local user is refused at the door (root passes any door, so
    // this is only asked as root, of the unprivileged user `nobody`).
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if root {
        let other = Command::new("runuser")
            .args(["-u", "nobody", "--", "python3", "-c"])
            .arg(format!(
                "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?})\nexcept PermissionError:\n    raise SystemExit(13)\n",
                socket.display().to_string()
            ))
            .output()
            .unwrap();
        assert_eq!(
            other.status.code(),
            Some(13),
            "another user reached the embedded database: {}",
            String::from_utf8_lossy(&other.stderr)
        );
    }
    assert!(serve.terminate().success());
}
