//! The gate reports its mode, version and public routes to keyplane, which
//! shows them in `GET /v1/nodes` and flags a gate weaker than itself; and it
//! looks after its own node key.
//!
//! With the key in a file it may write (`KEYPLANE_NODE_KEY_FILE`), the gate
//! rotates it when keyplane's heartbeat answer says rotation is due: the new
//! key is written to the file (atomically, mode 0600) and used from the
//! next call; a write that fails is retried on the next beat while the old
//! key, still in the file, works through its grace window. A key an
//! operator puts in the file (after `POST /v1/nodes/{id}/rotate`) is picked
//! up on the next beat. Requests in flight and the revocation stream carry
//! on throughout. A read-only key file (a secret mount) is left alone, and
//! the gate says when its key is due.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyplane_client::Introspector;
use keyplane_domain::{KeyDigest, KeyKind, KeySecret};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

/// How long the old key keeps working after the gate rotates it.
const GRACE_SECONDS: u64 = 3600;

#[derive(Debug, Deserialize)]
struct Answer {
    mode: String,
    mode_weaker: bool,
    #[serde(default)]
    rotation_due: bool,
    #[serde(default)]
    presented_key: String,
}

#[derive(Debug, Deserialize)]
struct Rotated {
    secret: String,
}

/// Reports every `period`, for as long as the gate runs, and rotates the
/// node key kept in `key_file` when it is due.
pub async fn run(
    introspector: Introspector,
    public_routes: Vec<String>,
    period: Duration,
    key_file: Option<PathBuf>,
) {
    let body = json!({
        "mode": introspector.mode(),
        "version": env!("CARGO_PKG_VERSION"),
        "public_routes": public_routes,
    });
    let mut ticks = tokio::time::interval(period);
    let mut warned_weaker = false;
    let mut warned_due = false;
    // A new key not yet in the file (its write failed): written, then used.
    let mut unwritten: Option<KeySecret> = None;
    loop {
        ticks.tick().await;
        if let Some(path) = &key_file {
            match unwritten.take() {
                Some(key) => unwritten = keep(&introspector, path, key),
                None => pick_up(&introspector, path),
            }
        }
        let base = introspector.base_url();
        let sent = introspector
            .http()
            .post(format!("{base}/v1/heartbeat"))
            .bearer_auth(introspector.node_key().expose_secret())
            .timeout(Duration::from_secs(5))
            .json(&body)
            .send()
            .await;
        let answer = match sent {
            Ok(response) if response.status().is_success() => response.json::<Answer>().await,
            Ok(response) => {
                tracing::warn!(status = %response.status(), "keyplane refused the heartbeat");
                if response.status().is_server_error() {
                    introspector.endpoints().failed(&base);
                }
                continue;
            }
            Err(err) => {
                tracing::debug!(error = %err.without_url(), "heartbeat not delivered");
                introspector.endpoints().failed(&base);
                continue;
            }
        };
        let Ok(answer) = answer else { continue };
        if answer.mode_weaker && !warned_weaker {
            warned_weaker = true;
            tracing::warn!(keyplane_mode = %answer.mode, gate_mode = %introspector.mode(),
                "this gate runs in a weaker mode than keyplane; operators see it flagged");
        }
        if !(answer.rotation_due && answer.presented_key == "current") || unwritten.is_some() {
            continue;
        }
        // A new key is asked for only where it can be kept: a key file
        // the gate cannot write (a read-only secret mount) stays the
        // operator's to rotate.
        match key_file
            .as_deref()
            .filter(|path| writable(&introspector, path))
        {
            Some(path) => match rotate(&introspector).await {
                Ok(key) => unwritten = keep(&introspector, path, key),
                Err(why) => {
                    tracing::warn!(error = %why, "could not rotate the node key; retrying next beat")
                }
            },
            None if !warned_due => {
                warned_due = true;
                tracing::warn!(
                    "this gate's node key is due for rotation: give it the key in a file it \
                     may write (KEYPLANE_NODE_KEY_FILE) and it rotates the key itself, or \
                     rotate it with POST /v1/nodes/{{id}}/rotate and give the gate the new key"
                );
            }
            None => {}
        }
    }
}

/// Asks keyplane for a new node key.
async fn rotate(introspector: &Introspector) -> Result<KeySecret, String> {
    let response = introspector
        .http()
        .post(format!("{}/v1/nodes/self/rotate", introspector.base_url()))
        .bearer_auth(introspector.node_key().expose_secret())
        .timeout(Duration::from_secs(10))
        .json(&json!({ "grace_seconds": GRACE_SECONDS }))
        .send()
        .await
        .map_err(|err| err.without_url().to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("keyplane answered {status}"));
    }
    let rotated: Rotated = response.json().await.map_err(|err| err.to_string())?;
    KeySecret::parse_as(KeyKind::Node, &rotated.secret)
        .map_err(|_| "keyplane answered something that is not a node key".to_owned())
}

/// Whether the gate can replace the key file (tried by writing the key in
/// use back to it: the file is unchanged either way).
fn writable(introspector: &Introspector, path: &Path) -> bool {
    let current = format!("{}\n", introspector.node_key().expose_secret());
    match keyplane_client::write_private(path, current.as_bytes()) {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(error = %err, "the node key file cannot be written");
            false
        }
    }
}

/// Writes `key` to `path` and presents it; answers it back if the write
/// failed, to write it next beat. It is presented either way: the file's
/// old key works only for the grace window, so a restart within it still
/// finds a working key, and the error says what to fix.
fn keep(introspector: &Introspector, path: &Path, key: KeySecret) -> Option<KeySecret> {
    let contents = format!("{}\n", key.expose());
    let written = keyplane_client::write_private(path, contents.as_bytes());
    let masked = key.masked();
    if introspector
        .set_node_key(SecretString::from(key.expose().to_owned()))
        .is_err()
    {
        tracing::error!("keyplane's new node key was refused locally");
        return None;
    }
    match written {
        Ok(()) => {
            tracing::info!(key = %masked, file = %path.display(), "rotated the node key");
            None
        }
        Err(err) => {
            tracing::error!(error = %err, key = %masked,
                "rotated the node key but cannot write it: a restart after the old key's grace window would find no working key");
            Some(key)
        }
    }
}

/// Presents the key in `path` if it is another node key than the one in use
/// (an operator rotated the node and put the new key there).
fn pick_up(introspector: &Introspector, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let Ok(key) = KeySecret::parse_as(KeyKind::Node, text.trim()) else {
        tracing::warn!(file = %path.display(), "the node key file holds no node key; keeping the current one");
        return;
    };
    // Digests compare in constant time.
    if key.digest() != KeyDigest::of(introspector.node_key().expose_secret()) {
        let masked = key.masked();
        if introspector
            .set_node_key(SecretString::from(key.expose().to_owned()))
            .is_ok()
        {
            tracing::info!(key = %masked, file = %path.display(), "picked up a new node key from its file");
        }
    }
}
