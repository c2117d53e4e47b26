//! `keyplane agent`: runs beside a Jan instance and keeps its API key in a
//! file. On first start it enrolls with an enrollment token; from then on it
//! rotates the key itself when keyplane says rotation is due (well before
//! expiry), writing each new key atomically (mode 0600) for the instance to
//! read. It rides out keyplane outages by retrying with backoff, and never
//! logs a key: only its masked form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use keyplane_domain::{KeyKind, KeySecret, Mode, parse_duration};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

/// Settings of `keyplane agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// keyplane's base URL (https outside dev, unless on this host).
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
}

/// The longest wait between two attempts while keyplane is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
struct SelfInfo {
    id: uuid::Uuid,
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
    url: String,
    key_file: PathBuf,
    grace_seconds: u64,
}

/// Runs the agent until `shutdown` completes, or until keyplane refuses its
/// credentials for good.
pub async fn run(
    args: AgentArgs,
    mode: Mode,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let url = args.url.trim_end_matches('/').to_owned();
    keyplane_client::require_https(mode, &url)?;
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
        url,
        key_file: args.key_file.clone(),
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
        let mut key = match read_key(&self.key_file)? {
            Some(key) => key,
            None => self.enroll(name).await?,
        };
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
                        .post(format!("{}/v1/enroll", self.url))
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
                    .get(format!("{}/v1/self", self.url))
                    .bearer_auth(key.expose()),
            )
            .await?;
        let info: SelfInfo =
            serde_json::from_value(body).map_err(|e| Failure::Transient(e.to_string()))?;
        if Utc::now() < info.rotation_due_at {
            tracing::debug!(key_id = %info.id, due = %info.rotation_due_at, expires = %info.expires_at, "rotation not due");
            return Ok(None);
        }
        let body = self
            .call(
                self.http
                    .post(format!("{}/v1/self/rotate", self.url))
                    .bearer_auth(key.expose())
                    .json(&json!({ "grace_seconds": self.grace_seconds })),
            )
            .await?;
        let created: Created =
            serde_json::from_value(body).map_err(|e| Failure::Transient(e.to_string()))?;
        let successor = KeySecret::parse_as(KeyKind::Instance, &created.secret).map_err(|_| {
            Failure::Transient("keyplane answered something that is not an API key".to_owned())
        })?;
        // Written at once: the old key works only for the grace window. If
        // the write fails, the next check rotates again with the old key,
        // and keyplane replaces the successor no one ever used.
        write_key(&self.key_file, &successor)
            .map_err(|e| Failure::Transient(format!("cannot write the new key: {e:#}")))?;
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
        let answer = request
            .send()
            .await
            .map_err(|e| Failure::Transient(e.without_url().to_string()))?;
        let status = answer.status();
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

/// The key kept in `path`, if there is one.
fn read_key(path: &Path) -> anyhow::Result<Option<KeySecret>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = KeySecret::parse_as(KeyKind::Instance, text.trim()).map_err(|_| {
                anyhow::anyhow!("{} does not hold a keyplane API key", path.display())
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
