//! The organisation's OpenID provider, as keyplane's sign-in needs it:
//! discovery, the authorization request, the code exchange, and the ID
//! token's validation against the provider's published keys.
//!
//! An ID token is believed only when it is signed by one of the provider's
//! keys with an asymmetric algorithm that key is for (never `none`, never an
//! HMAC keyed with something public), names this provider and this client,
//! has not expired, was issued just now, and carries the nonce of the
//! sign-in it answers. Nothing here logs or returns a token, a code or a
//! secret: refusals name what was wrong, not what was sent.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::config::OidcSettings;

/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// The least time between two fetches of the keys for an unknown `kid`.
const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// How much clocks may disagree.
const LEEWAY: u64 = 60;
/// How old an ID token may be when it arrives (it is fetched at once).
const MAX_TOKEN_AGE: u64 = 600;
/// The algorithms an ID token may be signed with: asymmetric only.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a sign-in could not be finished with the provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached, or answered something unusable.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the code (spent, expired, not ours).
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    /// The ID token is not one to believe.
    #[error("the ID token is not valid: {0}")]
    BadToken(&'static str),
}

/// Who the provider says signed in, and how.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The provider's stable id for the person.
    pub subject: String,
    /// Their email, if the provider said.
    pub email: Option<String>,
    /// Authentication methods used (RFC 8176).
    pub amr: Vec<String>,
    /// The authentication context class.
    pub acr: Option<String>,
    /// When the person authenticated.
    pub auth_time: DateTime<Utc>,
    /// The values of the configured role claim (e.g. groups).
    pub role_values: Vec<String>,
}

/// What discovery says about the provider.
#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
}

/// The provider, discovered on first use and its keys cached.
pub struct IdentityProvider {
    settings: OidcSettings,
    http: reqwest::Client,
    metadata: RwLock<Option<Metadata>>,
    keys: RwLock<Option<(JwkSet, Instant)>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.settings.issuer)
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// The provider `settings` names; nothing is fetched yet, so keyplane
    /// starts (and serves nodes) while the provider is down.
    pub fn new(settings: OidcSettings) -> anyhow::Result<IdentityProvider> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("keyplane/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(IdentityProvider {
            settings,
            http,
            metadata: RwLock::new(None),
            keys: RwLock::new(None),
            last_fetch: Mutex::new(None),
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// The provider's metadata, discovered once.
    async fn metadata(&self) -> Result<Metadata, OidcError> {
        if let Some(metadata) = self.metadata.read().await.clone() {
            return Ok(metadata);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let metadata: Metadata = self.get_json(&url).await?;
        if metadata.issuer != self.settings.issuer {
            return Err(OidcError::Unavailable(format!(
                "discovery names the issuer {:?}, not the configured {:?}",
                metadata.issuer, self.settings.issuer
            )));
        }
        *self.metadata.write().await = Some(metadata.clone());
        Ok(metadata)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let answer = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|err| OidcError::Unavailable(format!("{url}: {}", describe(&err))))?;
        if !answer.status().is_success() {
            return Err(OidcError::Unavailable(format!(
                "{url} answered {}",
                answer.status()
            )));
        }
        answer
            .json()
            .await
            .map_err(|_| OidcError::Unavailable(format!("{url} answered something unreadable")))
    }

    /// Where to send the browser: the provider's authorization endpoint with
    /// PKCE (`challenge`, S256), `state` and `nonce`. `max_age` asks for an
    /// authentication no older than that (0: authenticate again now).
    pub async fn authorization_url(
        &self,
        state: &str,
        nonce: &str,
        challenge: &str,
        max_age: Duration,
    ) -> Result<Url, OidcError> {
        let metadata = self.metadata().await?;
        let mut url = metadata.authorization_endpoint;
        let mut scopes = self.settings.scopes.clone();
        if !scopes.split(' ').any(|s| s == "openid") {
            scopes = format!("openid {scopes}");
        }
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", self.settings.redirect_url.as_str())
            .append_pair("scope", &scopes)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("max_age", &max_age.as_secs().to_string());
        if max_age.is_zero() {
            url.query_pairs_mut().append_pair("prompt", "login");
        }
        Ok(url)
    }

    /// Exchanges an authorization code (with its PKCE `verifier`) for an
    /// ID token, and validates it against `nonce`.
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, OidcError> {
        let metadata = self.metadata().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_url.as_str()),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(metadata.token_endpoint.clone());
        match &self.settings.client_secret {
            Some(secret) => {
                request = request.basic_auth(
                    form_encode(&self.settings.client_id),
                    Some(form_encode(secret.expose_secret())),
                );
            }
            None => form.push(("client_id", &self.settings.client_id)),
        }
        let answer = request.form(&form).send().await.map_err(|err| {
            OidcError::Unavailable(format!("the token endpoint: {}", describe(&err)))
        })?;
        let status = answer.status();
        let body: Value = answer.json().await.map_err(|_| {
            OidcError::Unavailable("the token endpoint answered something unreadable".to_owned())
        })?;
        if !status.is_success() {
            // The error code is the provider's word; its description may
            // echo what was sent, so it stays out.
            let code = body["error"].as_str().unwrap_or("unknown error");
            let code: String = code
                .chars()
                .filter(char::is_ascii_graphic)
                .take(64)
                .collect();
            return Err(OidcError::Refused(code));
        }
        let id_token = body["id_token"]
            .as_str()
            .ok_or(OidcError::BadToken("the provider answered no ID token"))?;
        self.validate(id_token, nonce).await
    }

    /// Validates an ID token meant for this client, answering a sign-in
    /// that sent `nonce`.
    pub async fn validate(&self, id_token: &str, nonce: &str) -> Result<Identity, OidcError> {
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|_| OidcError::BadToken("its header names no algorithm keyplane accepts"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::BadToken(
                "it is not signed with an asymmetric key",
            ));
        }
        let jwk = self.key_for(header.kid.as_deref(), header.alg).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| OidcError::BadToken("the provider's key cannot be read"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.client_id]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                OidcError::BadToken(match err.kind() {
                    ErrorKind::InvalidSignature => "its signature does not verify",
                    ErrorKind::ExpiredSignature => "it has expired",
                    ErrorKind::InvalidAudience => "it is for another client",
                    ErrorKind::InvalidIssuer => "it is from another issuer",
                    ErrorKind::MissingRequiredClaim(_) => "it lacks a required claim",
                    ErrorKind::ImmatureSignature => "it is not valid yet",
                    _ => "it cannot be verified",
                })
            })?
            .claims;
        self.check_claims(&claims, nonce)
    }

    /// What the signature does not prove: `azp`, `iat`, `nonce`, and that
    /// the claims keyplane reads are what they should be.
    fn check_claims(&self, claims: &Value, nonce: &str) -> Result<Identity, OidcError> {
        let client_id = self.settings.client_id.as_str();
        let audiences = match &claims["aud"] {
            Value::Array(items) => items.len(),
            _ => 1,
        };
        match claims.get("azp") {
            Some(azp) if azp.as_str() != Some(client_id) => {
                return Err(OidcError::BadToken("it was issued to another party (azp)"));
            }
            None if audiences > 1 => {
                return Err(OidcError::BadToken("it names several audiences and no azp"));
            }
            _ => {}
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let iat = claims["iat"]
            .as_u64()
            .ok_or(OidcError::BadToken("its iat is not a time"))?;
        if iat > now + LEEWAY || iat + MAX_TOKEN_AGE + LEEWAY < now {
            return Err(OidcError::BadToken("it was not issued just now (iat)"));
        }
        let sent = claims["nonce"].as_str().unwrap_or_default();
        if !constant_time_eq(sent.as_bytes(), nonce.as_bytes()) {
            return Err(OidcError::BadToken("its nonce is not this sign-in's"));
        }
        let subject = claims["sub"]
            .as_str()
            .filter(|sub| !sub.is_empty() && sub.len() <= 255)
            .ok_or(OidcError::BadToken("its subject is not usable"))?;
        let auth_time = claims["auth_time"]
            .as_i64()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .ok_or(OidcError::BadToken(
                "it lacks auth_time (keyplane asks with max_age)",
            ))?;
        if auth_time.timestamp() > i64::try_from(now + LEEWAY).unwrap_or(i64::MAX) {
            return Err(OidcError::BadToken("its auth_time is in the future"));
        }
        let strings = |value: &Value| -> Vec<String> {
            match value {
                Value::String(one) => vec![one.clone()],
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            }
        };
        Ok(Identity {
            subject: subject.to_owned(),
            email: claims["email"]
                .as_str()
                .filter(|e| e.len() <= 320)
                .map(str::to_owned),
            amr: strings(&claims["amr"]),
            acr: claims["acr"].as_str().map(str::to_owned),
            auth_time,
            role_values: strings(&claims[self.settings.role_claim.as_str()]),
        })
    }

    /// The provider's key `kid` names, for `alg`; an unknown `kid` fetches
    /// the keys again, at most every few seconds.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, OidcError> {
        let fresh = self
            .keys
            .read()
            .await
            .as_ref()
            .filter(|(_, at)| at.elapsed() < KEYS_TTL)
            .and_then(|(set, _)| pick(set, kid, alg));
        if let Some(jwk) = fresh {
            return Ok(jwk);
        }
        // One fetch at a time: a sign-in that waited here looks again at
        // what the one before it fetched.
        let mut last = self.last_fetch.lock().await;
        let cached = self
            .keys
            .read()
            .await
            .as_ref()
            .filter(|(_, at)| at.elapsed() < KEYS_TTL)
            .map(|(set, _)| pick(set, kid, alg));
        match cached {
            Some(Some(jwk)) => return Ok(jwk),
            Some(None) if last.is_some_and(|at| at.elapsed() < REFETCH_EVERY) => {
                return Err(OidcError::BadToken(
                    "it is signed by a key the provider does not publish",
                ));
            }
            _ => {}
        }
        *last = Some(Instant::now());
        let metadata = self.metadata().await?;
        // Keys keyplane cannot read (for encryption, of other types) are
        // skipped, not a reason to refuse the ones it can.
        let published: Value = self.get_json(metadata.jwks_uri.as_str()).await?;
        let set = JwkSet {
            keys: published["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|key| serde_json::from_value::<Jwk>(key.clone()).ok())
                .collect(),
        };
        let jwk = pick(&set, kid, alg);
        *self.keys.write().await = Some((set, Instant::now()));
        jwk.ok_or(OidcError::BadToken(
            "it is signed by a key the provider does not publish",
        ))
    }
}

/// The key in `set` for a token whose header names `kid` and `alg`: a
/// signing key of the algorithm's own type (and curve), whose `alg`, if it
/// names one, is the same.
fn pick(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
    let fits = |jwk: &Jwk| {
        let purpose = jwk
            .common
            .public_key_use
            .as_ref()
            .is_none_or(|u| matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature));
        let named = jwk
            .common
            .key_algorithm
            .is_none_or(|named| key_algorithm(named) == Some(alg));
        let kind = match (&jwk.algorithm, alg) {
            (
                AlgorithmParameters::RSA(_),
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            ) => true,
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
                ec.curve == EllipticCurve::P256
            }
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
                ec.curve == EllipticCurve::P384
            }
            (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
                okp.curve == EllipticCurve::Ed25519
            }
            _ => false,
        };
        purpose && named && kind
    };
    set.keys
        .iter()
        .filter(|jwk| kid.is_none_or(|kid| jwk.common.key_id.as_deref() == Some(kid)))
        .find(|jwk| fits(jwk))
        .cloned()
}

fn key_algorithm(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before they
/// go into HTTP Basic authentication.
fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// What went wrong with a request, in words that carry none of it.
fn describe(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    }
}

#[cfg(test)]
mod tests {
    use keyplane_domain::ManagementRole;
    use serde_json::json;

    use super::*;

    fn provider() -> IdentityProvider {
        IdentityProvider::new(OidcSettings {
            issuer: "https://idp.example".to_owned(),
            client_id: "keyplane".to_owned(),
            client_secret: None,
            redirect_url: Url::parse("https://keyplane.example/v1/auth/oidc/callback").unwrap(),
            scopes: "openid".to_owned(),
            require_amr: vec!["mfa".to_owned()],
            require_acr: Vec::new(),
            role_claim: "groups".to_owned(),
            role_map: vec![("ops".to_owned(), ManagementRole::Operator)],
            step_up: Duration::from_secs(600),
            session_ttl: Duration::from_secs(3600),
            session_idle: Duration::from_secs(600),
            device_token_ttl: Duration::from_secs(3600),
        })
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> Value {
        json!({"sub": "alice", "aud": "keyplane", "iat": now(), "nonce": "n-1",
               "auth_time": now(), "amr": ["pwd", "mfa"], "groups": "ops",
               "email": "alice@example.com"})
    }

    #[test]
    fn the_claims_a_signature_does_not_prove_are_checked() {
        let provider = provider();
        let identity = provider.check_claims(&claims(), "n-1").unwrap();
        assert_eq!(identity.subject, "alice");
        assert_eq!(
            identity.role_values,
            vec!["ops"],
            "a single string is one value"
        );
        assert_eq!(identity.amr, vec!["pwd", "mfa"]);

        let refused = |change: Value, nonce: &str| {
            let mut claims = claims();
            claims
                .as_object_mut()
                .unwrap()
                .extend(change.as_object().unwrap().clone());
            provider.check_claims(&claims, nonce).unwrap_err()
        };
        assert!(
            matches!(refused(json!({}), "n-2"), OidcError::BadToken(why) if why.contains("nonce"))
        );
        assert!(
            matches!(refused(json!({"azp": "other"}), "n-1"), OidcError::BadToken(why) if why.contains("azp"))
        );
        assert!(matches!(
            refused(json!({"aud": ["keyplane", "other"]}), "n-1"),
            OidcError::BadToken(why) if why.contains("several audiences")
        ));
        assert!(
            provider
                .check_claims(
                    &{
                        let mut c = claims();
                        c["aud"] = json!(["keyplane", "other"]);
                        c["azp"] = json!("keyplane");
                        c
                    },
                    "n-1"
                )
                .is_ok()
        );
        assert!(
            matches!(refused(json!({"iat": now() + 3600}), "n-1"), OidcError::BadToken(why) if why.contains("iat"))
        );
        assert!(
            matches!(refused(json!({"iat": now() - 7200}), "n-1"), OidcError::BadToken(why) if why.contains("iat"))
        );
        assert!(
            matches!(refused(json!({"auth_time": null}), "n-1"), OidcError::BadToken(why) if why.contains("auth_time"))
        );
        assert!(
            matches!(refused(json!({"sub": ""}), "n-1"), OidcError::BadToken(why) if why.contains("subject"))
        );
    }

    #[test]
    fn a_key_is_picked_only_for_an_algorithm_of_its_own_type_and_curve() {
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "EC", "kid": "ec", "crv": "P-256", "use": "sig",
             "x": "uAhA44_9vMUBTDCIgEq9fOiV2O1ey2TwUbe_ec9VGeQ",
             "y": "ODfqFZAqjY_wdZFJiwo-1T1GU0F_YyN8lDZlFlLHrC4"},
            {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "enc", "crv": "P-256", "use": "enc",
             "x": "uAhA44_9vMUBTDCIgEq9fOiV2O1ey2TwUbe_ec9VGeQ",
             "y": "ODfqFZAqjY_wdZFJiwo-1T1GU0F_YyN8lDZlFlLHrC4"}
        ]}))
        .unwrap();
        assert!(pick(&set, Some("ec"), Algorithm::ES256).is_some());
        assert!(
            pick(&set, Some("ec"), Algorithm::ES384).is_none(),
            "wrong curve"
        );
        assert!(
            pick(&set, Some("ec"), Algorithm::RS256).is_none(),
            "wrong type"
        );
        assert!(pick(&set, Some("rsa"), Algorithm::RS256).is_some());
        assert!(
            pick(&set, Some("rsa"), Algorithm::PS256).is_none(),
            "the key names RS256"
        );
        assert!(pick(&set, Some("hmac"), Algorithm::ES256).is_none());
        assert!(
            pick(&set, Some("enc"), Algorithm::ES256).is_none(),
            "not a signing key"
        );
        assert!(pick(&set, Some("missing"), Algorithm::ES256).is_none());
        assert!(
            !ALGORITHMS
                .iter()
                .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        );
    }
}
