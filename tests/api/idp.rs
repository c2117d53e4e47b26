//! A real OpenID provider for the sign-in tests (npm `oidc-provider`, run
//! by `tests/oidc/provider.mjs`), and a browser: an HTTP client with a
//! cookie jar that follows redirects and posts the provider's sign-in form.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use keyplane_domain::ManagementRole;
use keyplane_server::config::{OidcSettings, Settings};
use reqwest::{StatusCode, Url};
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// keyplane's client at the test provider.
pub const CLIENT_ID: &str = "keyplane";
/// Its secret there.
pub const CLIENT_SECRET: &str = "client-secret-for-tests-only-0123456789";

/// The provider, running until dropped.
pub struct Idp {
    /// Its issuer URL.
    pub issuer: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

fn provider_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/oidc"))
}

impl Idp {
    /// Starts a provider that sends people back to `redirect_uri`, signing
    /// with a P-256 key made here (as PEM: made at start in Node 20, keys
    /// can hang).
    pub async fn start(redirect_uri: &str) -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let key_path = dir.path().join("signing.pem");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let modules = provider_dir().join("node_modules/oidc-provider");
        assert!(
            modules.exists(),
            "tests/oidc/node_modules is missing: scripts/test installs it (npm ci)"
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(provider_dir())
            .env("OIDC_KEY", &key_path)
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
            .env("OIDC_REDIRECT_URI", redirect_uri)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("OIDC_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Ok(ready) = serde_json::from_str::<serde_json::Value>(&line) {
                    return ready["issuer"].as_str().unwrap().to_owned();
                }
            }
            panic!("the provider exited before it was ready");
        })
        .await
        .expect("the provider starts within 30 s");
        // Keeps reading, so that the provider never writes to a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Idp {
            issuer,
            _child: child,
            _dir: dir,
        }
    }

    /// Sign-in settings for a keyplane reached at `keyplane` (its origin):
    /// MFA by `amr` (the default), three groups mapped to roles.
    pub fn settings(&self, keyplane: &str) -> OidcSettings {
        OidcSettings {
            issuer: self.issuer.clone(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: Some(SecretString::from(CLIENT_SECRET.to_owned())),
            redirect_url: Url::parse(&format!("{keyplane}/v1/auth/oidc/callback")).unwrap(),
            scopes: "openid email groups".to_owned(),
            require_amr: vec!["mfa".to_owned(), "otp".to_owned(), "hwk".to_owned()],
            require_acr: Vec::new(),
            role_claim: "groups".to_owned(),
            role_map: vec![
                ("keyplane-admins".to_owned(), ManagementRole::Admin),
                ("keyplane-ops".to_owned(), ManagementRole::Operator),
                ("keyplane-audit".to_owned(), ManagementRole::Auditor),
            ],
            step_up: Duration::from_secs(600),
            session_ttl: Duration::from_secs(8 * 3600),
            session_idle: Duration::from_secs(1800),
            device_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// A keyplane on a port chosen ahead (the provider must know where it
/// sends people back), with a provider: settings for both.
pub async fn keyplane_with_idp(settings: Settings) -> (Settings, Idp, String) {
    let port = crate::support::free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let idp = Idp::start(&format!("{origin}/v1/auth/oidc/callback")).await;
    let settings = Settings {
        listen: ([127, 0, 0, 1], port).into(),
        oidc: Some(idp.settings(&origin)),
        ..settings
    };
    (settings, idp, origin)
}

/// Who signs in at the provider, and how.
#[derive(Debug, Clone)]
pub struct Person {
    /// The subject.
    pub sub: String,
    /// Their email.
    pub email: String,
    /// Their groups.
    pub groups: Vec<&'static str>,
    /// How they authenticated (RFC 8176).
    pub amr: Vec<&'static str>,
    /// How long ago, in seconds.
    pub auth_age: u64,
    /// What the provider's token endpoint does to the ID token.
    pub mischief: Option<&'static str>,
}

impl Person {
    /// Someone in `group`, signing in with a password and a one-time code.
    pub fn in_group(sub: &str, group: &'static str) -> Person {
        Person {
            sub: sub.to_owned(),
            email: format!("{sub}@example.com"),
            groups: vec![group],
            amr: vec!["pwd", "otp"],
            auth_age: 0,
            mischief: None,
        }
    }
}

/// A browser: cookies kept, redirects followed by hand.
pub struct Browser {
    /// Its HTTP client.
    pub client: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Browser {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }
}

impl Browser {
    /// Goes from `start` through the provider's sign-in (posting its form
    /// as `person`) until the provider sends the browser to keyplane's
    /// callback; answers that callback URL, not yet visited.
    pub async fn authorize(&self, start: &str, person: &Person) -> String {
        let mut url = Url::parse(start).unwrap();
        let mut response = self.client.get(url.clone()).send().await.unwrap();
        for _ in 0..20 {
            match response.status() {
                status if status.is_redirection() => {
                    let location = response.headers()["location"].to_str().unwrap();
                    url = url.join(location).unwrap();
                    if url.path() == "/v1/auth/oidc/callback" {
                        return url.to_string();
                    }
                    response = self.client.get(url.clone()).send().await.unwrap();
                }
                StatusCode::OK if url.path().starts_with("/interaction/") => {
                    let form = [
                        ("sub", person.sub.clone()),
                        ("email", person.email.clone()),
                        ("groups", person.groups.join(",")),
                        ("amr", person.amr.join(",")),
                        ("auth_age", person.auth_age.to_string()),
                        ("mischief", person.mischief.unwrap_or_default().to_owned()),
                    ];
                    response = self
                        .client
                        .post(url.clone())
                        .form(&form)
                        .send()
                        .await
                        .unwrap();
                }
                status => panic!(
                    "the sign-in stopped at {url} with {status}: {}",
                    response.text().await.unwrap_or_default()
                ),
            }
        }
        panic!("the sign-in did not come back to keyplane within 20 steps");
    }

    /// Approves, as `person`, the terminal showing `user_code`: the form on
    /// keyplane's verification page, the provider's sign-in, and the
    /// callback, whose answer this is.
    pub async fn approve_terminal(
        &self,
        origin: &str,
        user_code: &str,
        person: &Person,
    ) -> reqwest::Response {
        let start = self
            .client
            .post(format!("{origin}/v1/auth/device/verify"))
            .form(&[("user_code", user_code)])
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 303, "{:?}", start.text().await);
        let to_provider = start.headers()["location"].to_str().unwrap().to_owned();
        let callback = self.authorize(&to_provider, person).await;
        self.client.get(callback).send().await.unwrap()
    }

    /// Signs in from keyplane's `login` URL as `person`, and visits the callback.
    pub async fn sign_in(&self, login: &str, person: &Person) -> reqwest::Response {
        let callback = self.authorize(login, person).await;
        self.client.get(callback).send().await.unwrap()
    }
}

/// The value of the cookie `name` a response sets, if it sets one.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|rest| rest.split(';').next().unwrap_or_default().to_owned())
        .filter(|value| !value.is_empty())
}
