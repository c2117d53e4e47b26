//! `keyplane agent`: runs beside a Jan instance and keeps its API key in a
//! file. On first start it enrolls with an enrollment token; from then on it
//! rotates the key itself when keyplane says rotation is due (well before
//! expiry), writing each new key atomically (mode 0600) for the instance to
//! read. It rides out keyplane outages by retrying with backoff, and never
//! logs a key: only its masked form.
//!
//! With `--node` it keeps a node's `kpn_` key the same way (for a node whose
//! proxy cannot rotate its own, such as nginx): the first key comes from
//! `KEYPLANE_NODE_KEY` (or `_FILE`), each new key is also written into
//! nginx's include file (`--nginx-include`), and a command (`--reload`,
//! e.g. `nginx -s reload`) makes the proxy read it; nginx reloads without
//! dropping a request, and the old key works through the grace window.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use keyplane_domain::{KeyDigest, KeyKind, KeySecret, Mode, parse_duration};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

/// Settings of `keyplane agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// keyplane's base URL, or several replicas' separated by commas (https
    /// outside dev, unless on this host).
    #[arg(long, env = "KEYPLANE_URL")]
    pub url: String,
    /// Where the instance's key is kept (written atomically, mode 0600).
    #[arg(
        long,
        env = "KEYPLANE_AGENT_KEY_FILE",
        default_value = "keyplane-agent/key"
    )]
    pub key_file: PathBuf,
    /// The instance's name, to enroll with (default: this host's name).
    #[arg(long, env = "KEYPLANE_AGENT_NAME")]
    pub name: Option<String>,
    /// How often to ask keyplane whether rotation is due (e.g. 5m).
    #[arg(long, env = "KEYPLANE_AGENT_CHECK", default_value = "5m")]
    pub check_every: String,
    /// How long a replaced key keeps working, so the instance can pick up
    /// the new file (e.g. 1h; at most a day).
    #[arg(long, env = "KEYPLANE_AGENT_GRACE", default_value = "1h")]
    pub grace: String,
    /// PEM CAs to trust for keyplane's certificate, besides the system's.
    #[arg(long, env = "KEYPLANE_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Keep a node's key (kpn_) instead of an instance's: the first one from
    /// KEYPLANE_NODE_KEY (or _FILE) when the key file does not exist yet.
    #[arg(long, env = "KEYPLANE_AGENT_NODE")]
    pub node: bool,
    /// With --node: also write each key into this nginx include file, as
    /// `set $keyplane_node_key "kpn_…";` (atomically, mode 0600).
    #[arg(long, env = "KEYPLANE_AGENT_NGINX_INCLUDE", requires = "node")]
    pub nginx_include: Option<PathBuf>,
    /// A command run (by /bin/sh) after each new key is written, e.g.
    /// `nginx -s reload`; the key is never in its arguments or environment.
    #[arg(long, env = "KEYPLANE_AGENT_RELOAD")]
    pub reload: Option<String>,
}

/// Whose key the agent keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// An instance's API key.
    Instance,
    /// A node's key.
    Node,
}

impl Holder {
    fn kind(self) -> KeyKind {
        match self {
            Holder::Instance => KeyKind::Instance,
            Holder::Node => KeyKind::Node,
        }
    }

    /// Where the holder reads its own key.
    fn self_path(self) -> &'static str {
        match self {
            Holder::Instance => "/v1/self",
            Holder::Node => "/v1/nodes/self",
        }
    }

    /// Where the holder rotates its own key.
    fn rotate_path(self) -> &'static str {
        match self {
            Holder::Instance => "/v1/self/rotate",
            Holder::Node => "/v1/nodes/self/rotate",
        }
    }
}

/// The longest wait between two attempts while keyplane is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What keyplane says of the key (by its own clock, which decides).
#[derive(Debug, Deserialize)]
struct SelfInfo {
    id: uuid::Uuid,
    rotation_due: bool,
    rotation_due_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: uuid::Uuid,
    secret: String,
}

/// What a call to keyplane came to.
enum Failure {
    /// keyplane refuses the credential: retrying will not help.
    Refused(String),
    /// keyplane is unreachable or failing: retry later.
    Transient(String),
}

struct Agent {
    http: reqwest::Client,
    /// keyplane's replicas: calls go to the one that answered last.
    endpoints: keyplane_client::Endpoints,
    holder: Holder,
    key_file: PathBuf,
    nginx_include: Option<PathBuf>,
    reload: Option<String>,
    grace_seconds: u64,
}

/// Runs the agent until `shutdown` completes, or until keyplane refuses its
/// credentials for good.
pub async fn run(
    args: AgentArgs,
    mode: Mode,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let endpoints = keyplane_client::Endpoints::parse(&args.url, mode)?;
    let check_every = parse_duration(&args.check_every)
        .map_err(|e| anyhow::anyhow!("KEYPLANE_AGENT_CHECK: {e}"))?
        .max(Duration::from_millis(100));
    let grace =
        parse_duration(&args.grace).map_err(|e| anyhow::anyhow!("KEYPLANE_AGENT_GRACE: {e}"))?;
    anyhow::ensure!(
        grace <= Duration::from_secs(86_400),
        "KEYPLANE_AGENT_GRACE: at most a day (keyplane refuses longer)"
    );
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyplane-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &args.ca_bundle {
        let pem = std::fs::read(path)
            .with_context(|| format!("KEYPLANE_CA_BUNDLE: cannot read {}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("KEYPLANE_CA_BUNDLE: {} is not PEM", path.display()))?
        {
            http = http.add_root_certificate(certificate);
        }
    }
    let agent = Agent {
        http: http.build()?,
        endpoints,
        holder: if args.node {
            Holder::Node
        } else {
            Holder::Instance
        },
        key_file: args.key_file.clone(),
        nginx_include: args.nginx_include.clone(),
        reload: args.reload.clone(),
        grace_seconds: grace.as_secs(),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        result = agent.work(args.name, check_every) => result,
        () = &mut shutdown => {
            tracing::info!("agent stopped");
            Ok(())
        }
    }
}

impl Agent {
    async fn work(&self, name: Option<String>, check_every: Duration) -> anyhow::Result<()> {
        let kind = self.holder.kind();
        let mut key = match (read_key(&self.key_file, kind)?, self.holder) {
            (Some(key), _) => key,
            (None, Holder::Instance) => self.enroll(name).await?,
            (None, Holder::Node) => self.adopt_node_key()?,
        };
        // The proxy may not run yet (it reads the file when it starts).
        if let Err(err) = self.publish(&key, false) {
            tracing::warn!(error = %format!("{err:#}"), "could not hand the key to the proxy yet");
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.check(&key).await {
                Ok(Some(rotated)) => {
                    key = rotated;
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Ok(None) => {
                    backoff = Duration::from_secs(1);
                    check_every
                }
                Err(Failure::Refused(why)) => bail!(
                    "keyplane refuses the key in {} ({why}); enroll again with a new enrollment token",
                    self.key_file.display()
                ),
                Err(Failure::Transient(why)) => {
                    tracing::warn!(error = %why, retry_in = ?backoff, "keyplane unreachable; keeping the current key");
                    let wait = backoff;
                    backoff = (backoff * 2)
                        .min(MAX_BACKOFF)
                        .min(check_every.max(Duration::from_secs(1)));
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A node's first key, from KEYPLANE_NODE_KEY (or _FILE), kept in the file.
    fn adopt_node_key(&self) -> anyhow::Result<KeySecret> {
        let given = keyplane_client::secret_from_env("KEYPLANE_NODE_KEY")
            .map_err(|e| anyhow::anyhow!("{}: {}", e.variable, e.reason))?
            .with_context(|| {
                format!(
                    "no key in {} and no KEYPLANE_NODE_KEY (or _FILE) to start from",
                    self.key_file.display()
                )
            })?;
        let key = KeySecret::parse_as(KeyKind::Node, given.expose_secret())
            .map_err(|_| anyhow::anyhow!("KEYPLANE_NODE_KEY: not a node key (kpn_…)"))?;
        write_key(&self.key_file, &key)?;
        tracing::info!(key = %key.masked(), file = %self.key_file.display(), "keeping the node key");
        Ok(key)
    }

    /// Writes `key` where the proxy reads it (the nginx include), when it is
    /// not there already or `changed`, and runs the reload command.
    fn publish(&self, key: &KeySecret, changed: bool) -> anyhow::Result<()> {
        let Some(include) = &self.nginx_include else {
            return if changed { self.run_reload() } else { Ok(()) };
        };
        let contents = nginx_include(key);
        let current = std::fs::read_to_string(include).unwrap_or_default();
        // Compared as digests: in constant time, whatever the file holds.
        if KeyDigest::of(&current) == KeyDigest::of(&contents) {
            return Ok(());
        }
        keyplane_client::write_private(include, contents.as_bytes())?;
        tracing::info!(key = %key.masked(), file = %include.display(), "wrote the node key for nginx");
        self.run_reload()
    }

    /// Runs the reload command, if there is one.
    fn run_reload(&self) -> anyhow::Result<()> {
        let Some(command) = &self.reload else {
            return Ok(());
        };
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .status()
            .with_context(|| format!("KEYPLANE_AGENT_RELOAD: cannot run {command:?}"))?;
        anyhow::ensure!(
            status.success(),
            "KEYPLANE_AGENT_RELOAD: {command:?} failed ({status})"
        );
        tracing::info!(command = %command, "reloaded");
        Ok(())
    }

    /// Enrolls, retrying while keyplane is unreachable, and keeps the key.
    async fn enroll(&self, name: Option<String>) -> anyhow::Result<KeySecret> {
        let token = keyplane_client::secret_from_env("KEYPLANE_ENROLLMENT_TOKEN")
            .map_err(|e| anyhow::anyhow!("{}: {}", e.variable, e.reason))?
            .with_context(|| {
                format!(
                    "no key in {} and no KEYPLANE_ENROLLMENT_TOKEN (or _FILE) to enroll with",
                    self.key_file.display()
                )
            })?;
        let name = match name {
            Some(name) => name,
            None => {
                hostname().context("KEYPLANE_AGENT_NAME: required (this host's name is unknown)")?
            }
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            let answer = self
                .call(
                    self.http
                        .post(format!("{}/v1/enroll", self.endpoints.current()))
                        .bearer_auth(token.expose_secret())
                        .json(&json!({ "name": name })),
                )
                .await;
            match answer {
                Ok(body) => {
                    let created: Created = serde_json::from_value(body)?;
                    let key =
                        KeySecret::parse_as(KeyKind::Instance, &created.secret).map_err(|_| {
                            anyhow::anyhow!("keyplane answered something that is not an API key")
                        })?;
                    write_key(&self.key_file, &key)?;
                    tracing::info!(key_id = %created.id, key = %key.masked(), instance = %name, "enrolled");
                    return Ok(key);
                }
                Err(Failure::Refused(why)) => bail!("enrollment refused: {why}"),
                Err(Failure::Transient(why)) => {
                    tracing::warn!(error = %why, retry_in = ?backoff, "cannot enroll yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Asks whether rotation is due and, if it is, rotates: answers the new
    /// key, already written to the file.
    async fn check(&self, key: &KeySecret) -> Result<Option<KeySecret>, Failure> {
        let body = self
            .call(
                self.http
                    .get(format!(
                        "{}{}",
                        self.endpoints.current(),
                        self.holder.self_path()
                    ))
                    .bearer_auth(key.expose()),
            )
            .await?;
        let info: SelfInfo =
            serde_json::from_value(body).map_err(|e| Failure::Transient(e.to_string()))?;
        if !info.rotation_due {
            tracing::debug!(id = %info.id, due = %info.rotation_due_at, expires = %info.expires_at, "rotation not due");
            return Ok(None);
        }
        let body = self
            .call(
                self.http
                    .post(format!(
                        "{}{}",
                        self.endpoints.current(),
                        self.holder.rotate_path()
                    ))
                    .bearer_auth(key.expose())
                    .json(&json!({ "grace_seconds": self.grace_seconds })),
            )
            .await?;
        let created: Created =
            serde_json::from_value(body).map_err(|e| Failure::Transient(e.to_string()))?;
        let successor = KeySecret::parse_as(self.holder.kind(), &created.secret).map_err(|_| {
            Failure::Transient("keyplane answered something that is not the new key".to_owned())
        })?;
        // Written at once: the old key works only for the grace window. If
        // the write fails, the next check rotates again with the old key,
        // and keyplane replaces the successor no one ever used.
        write_key(&self.key_file, &successor)
            .map_err(|e| Failure::Transient(format!("cannot write the new key: {e:#}")))?;
        // The proxy is told last; if that fails, the next check sees the
        // new key in the file and tells it again.
        if let Err(err) = self.publish(&successor, true) {
            tracing::error!(error = %format!("{err:#}"), "the new key is in its file, but the proxy has not read it");
        }
        tracing::info!(
            old_key_id = %info.id,
            old_key = %key.masked(),
            key_id = %created.id,
            key = %successor.masked(),
            grace_seconds = self.grace_seconds,
            "rotated"
        );
        Ok(Some(successor))
    }

    /// Sends a request; a 2xx JSON body, or what went wrong (never echoing
    /// the request, which carries a credential).
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, Failure> {
        // The replica the request was built for (the agent makes one call at a time).
        let base = self.endpoints.current().to_owned();
        let answer = request.send().await.map_err(|e| {
            self.endpoints.failed(&base);
            Failure::Transient(e.without_url().to_string())
        })?;
        let status = answer.status();
        if status.is_server_error() {
            self.endpoints.failed(&base);
        } else {
            self.endpoints.answered(&base);
        }
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        let detail = || {
            body["detail"]
                .as_str()
                .map_or_else(|| status.to_string(), |d| format!("{status}: {d}"))
        };
        match status {
            s if s.is_success() => Ok(body),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::CONFLICT => {
                Err(Failure::Refused(detail()))
            }
            s if s.is_client_error()
                && s != StatusCode::TOO_MANY_REQUESTS
                && s != StatusCode::REQUEST_TIMEOUT =>
            {
                Err(Failure::Refused(detail()))
            }
            _ => Err(Failure::Transient(detail())),
        }
    }
}

/// nginx's include file for `key`.
fn nginx_include(key: &KeySecret) -> String {
    format!(
        "# Written by keyplane agent --node: this node's key, replaced at each rotation.\n\
         set $keyplane_node_key \"{}\";\n",
        key.expose()
    )
}

/// The key of `kind` kept in `path`, if there is one.
fn read_key(path: &Path, kind: KeyKind) -> anyhow::Result<Option<KeySecret>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = KeySecret::parse_as(kind, text.trim()).map_err(|_| {
                anyhow::anyhow!(
                    "{} does not hold a keyplane {} key",
                    path.display(),
                    kind.prefix()
                )
            })?;
            Ok(Some(key))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the key in `path` atomically, readable by this user only.
fn write_key(path: &Path, key: &KeySecret) -> anyhow::Result<()> {
    Ok(keyplane_client::write_private(
        path,
        format!("{}\n", key.expose()).as_bytes(),
    )?)
}

/// This host's name.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}
