//! Signed introspection answers (RFC 9701) and audit checkpoints: Ed25519
//! keys whose private halves are sealed at rest with the master key.
//!
//! Keys renew on a [`Schedule`] while keyplane runs: the next key is made,
//! and published in the JWKS, a while before it starts signing (its
//! `active_from`), and a key that stopped signing stays published for as
//! long as answers it signed may still be believed. A node holding a JWKS
//! fetched a moment ago can always verify what it is sent.
//!
//! A key is trusted only if this keyplane's master key opens its sealed
//! half and that half is the private key of the public one stored beside it:
//! a public key written into the table by anyone else (who can write to the
//! database but does not hold the master key) is neither published nor
//! believed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keyplane_store::signing_keys;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::PgPool;
use zeroize::Zeroizing;

/// The key that seals secrets at rest (signing keys, webhook secrets): 32
/// bytes, given in base64 or hex; while it is being rotated, with the key
/// it replaces, which still opens what it sealed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>, Option<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Opens `sealed` with `key` if it sealed it with `context`.
fn open_with(key: &[u8; 32], sealed: &[u8], context: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, body) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: body,
                aad: context,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// A master key that is not 32 bytes of base64 or hex.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("expected 32 bytes, base64 or hex encoded (e.g. `openssl rand -base64 32`)")]
pub struct MasterKeyError;

impl MasterKey {
    /// Reads 32 bytes written as 64 hex digits or as base64.
    pub fn parse(text: &str) -> Result<MasterKey, MasterKeyError> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                (0..32)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| MasterKeyError)?
            } else {
                STANDARD.decode(text).map_err(|_| MasterKeyError)?
            },
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| MasterKeyError)?;
        Ok(MasterKey(Zeroizing::new(key), None))
    }

    /// This key, also opening what `previous` sealed (while secrets are
    /// re-sealed from one to the other).
    pub fn replacing(self, previous: MasterKey) -> MasterKey {
        MasterKey(self.0, Some(previous.0))
    }

    /// Whether this key itself (not the one it replaces) opens `sealed`.
    pub(crate) fn sealed_it(&self, sealed: &[u8], context: &[u8]) -> bool {
        open_with(&self.0, sealed, context).is_some()
    }

    /// A fresh random master key, as base64 (for `dev`).
    pub fn generate() -> Result<String, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut())?;
        Ok(STANDARD.encode(bytes.as_ref()))
    }

    /// Seals `plain`, bound to `context` (what it is for), as nonce +
    /// ciphertext; always with this key, never the one it replaces.
    pub(crate) fn seal(&self, plain: &[u8], context: &[u8]) -> anyhow::Result<Vec<u8>> {
        let cipher = ChaCha20Poly1305::new(self.0.as_ref().into());
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// Opens what [`MasterKey::seal`] sealed with this key, or the key it
    /// replaces, and the same context.
    pub(crate) fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        open_with(&self.0, sealed, context).or_else(|| open_with(self.1.as_ref()?, sealed, context))
    }
}

/// Public keys whose signatures are believed, by key id.
#[derive(Clone, Default)]
pub struct TrustedKeys(HashMap<String, TrustedKey>);

#[derive(Clone)]
struct TrustedKey {
    public: [u8; 32],
    decoding: DecodingKey,
}

/// A signature no trusted key made (or a token that does not read).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Untrusted(String);

impl TrustedKeys {
    /// Trusts the raw Ed25519 public key `public` under `kid`.
    pub fn insert(&mut self, kid: &str, public: [u8; 32]) -> anyhow::Result<()> {
        let decoding = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(public))?;
        self.0
            .insert(kid.to_owned(), TrustedKey { public, decoding });
        Ok(())
    }

    /// Trusts every Ed25519 key of a JWKS (`{"keys": [...]}`) or of one JWK.
    pub fn from_jwks(jwks: &Value) -> anyhow::Result<TrustedKeys> {
        let keys = match jwks.get("keys") {
            Some(keys) => keys
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("`keys` is not a list"))?
                .clone(),
            None => vec![jwks.clone()],
        };
        let mut trusted = TrustedKeys::default();
        for key in &keys {
            let (Some(kid), Some(x)) = (key["kid"].as_str(), key["x"].as_str()) else {
                anyhow::bail!("a key without `kid` and `x`");
            };
            anyhow::ensure!(
                key["crv"].as_str().is_none_or(|crv| crv == "Ed25519"),
                "key {kid} is not an Ed25519 key"
            );
            let public: [u8; 32] = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("key {kid}: `x` is not a 32-byte key"))?;
            trusted.insert(kid, public)?;
        }
        Ok(trusted)
    }

    /// Trusts `other`'s keys too.
    pub fn extend(&mut self, other: TrustedKeys) {
        self.0.extend(other.0);
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The trusted keys as JWKs (with their fingerprints), sorted by key id.
    pub fn jwks(&self) -> Vec<Value> {
        let mut keys: Vec<(&String, &TrustedKey)> = self.0.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        keys.into_iter()
            .map(|(kid, key)| jwk(kid, &key.public))
            .collect()
    }

    /// The claims of `token`, a JWS of type `typ` signed by a trusted key.
    pub fn verify<T: DeserializeOwned>(&self, token: &str, typ: &str) -> Result<T, Untrusted> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Untrusted("the signature does not read".to_owned()))?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(typ) {
            return Err(Untrusted(format!("not an EdDSA signature of type {typ}")));
        }
        let kid = header.kid.unwrap_or_default();
        let key = self
            .0
            .get(&kid)
            .ok_or_else(|| Untrusted(format!("signed by key {kid:?}, which is not trusted")))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| Untrusted(format!("the signature by key {kid} does not verify")))
    }
}

/// The fingerprint operators pin: `sha256:` and the hex SHA-256 of the raw
/// Ed25519 public key.
pub fn fingerprint(public: &[u8]) -> String {
    let digest = sha2_digest(public);
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// A public key as a JWK, with its fingerprint.
fn jwk(kid: &str, public: &[u8]) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(public),
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
        "fingerprint": fingerprint(public),
    })
}

/// When signing keys renew.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How long a key signs before the next one takes over.
    pub renew_after: chrono::Duration,
    /// How long the next key is published before it signs.
    pub publish_ahead: chrono::Duration,
    /// How long a key that stopped signing stays published (longer than
    /// any signed answer may be cached).
    pub retired_published: chrono::Duration,
}

impl Default for Schedule {
    /// A new key every 30 days, published a day ahead, the old one kept a day.
    fn default() -> Self {
        Schedule {
            renew_after: chrono::Duration::days(30),
            publish_ahead: chrono::Duration::days(1),
            retired_published: chrono::Duration::days(1),
        }
    }
}

/// The key that signs now, the JWKS to verify with, and every key this
/// keyplane sealed (older checkpoints were signed by older keys).
struct Current {
    kid: String,
    encoding: EncodingKey,
    /// When this view goes stale: the next key starts signing, or a retired
    /// key leaves the JWKS.
    stale_at: Option<DateTime<Utc>>,
    jwks: Value,
    trusted: Arc<TrustedKeys>,
}

/// Signs answers with the current key; cheap to clone.
#[derive(Clone)]
pub struct Signer {
    current: Arc<RwLock<Arc<Current>>>,
    master: Arc<MasterKey>,
    schedule: Schedule,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// Loads the key that signs at `now`, making the first one if there is
    /// none (renewals are [`Signer::renew`]'s, on schedule).
    pub async fn load(
        pool: &PgPool,
        master: MasterKey,
        schedule: Schedule,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Signer> {
        let master = Arc::new(master);
        let current = match load_current(pool, &master, &schedule, now).await {
            Ok(current) => current,
            Err(LoadError::NoKey) => {
                add_key(pool, &master, now, now).await?;
                load_current(pool, &master, &schedule, now).await?
            }
            Err(err) => return Err(err.into()),
        };
        Ok(Signer {
            current: Arc::new(RwLock::new(Arc::new(current))),
            master,
            schedule,
        })
    }

    /// Makes a new signing key, signing from `now`, in the caller's
    /// transaction; once committed, [`Signer::reload`] makes it current and
    /// the previous one stays in the JWKS.
    pub async fn add_key(
        &self,
        conn: &mut sqlx::PgConnection,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        add_key(conn, &self.master, now, now).await
    }

    /// Makes the next key when it is due (the current one signed for
    /// `renew_after` less `publish_ahead`) and none is made yet, in the
    /// caller's transaction: it starts signing `publish_ahead` from now at
    /// the earliest. Answers its key id and when it signs, if it made one.
    ///
    /// It decides from the stored keys, under a lock, never from this
    /// process's view: the view follows a commit a moment later, and a
    /// renewal run within that moment would make a second next key.
    pub async fn renew(
        &self,
        conn: &mut sqlx::PgConnection,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<(String, DateTime<Utc>)>> {
        let Some(newest) = signing_keys::newest_locked(conn).await? else {
            return Ok(None);
        };
        let Schedule {
            renew_after,
            publish_ahead,
            ..
        } = self.schedule;
        // A newest key that does not sign yet is the next one, made already.
        if newest.active_from > now || now < newest.active_from + renew_after - publish_ahead {
            return Ok(None);
        }
        let active_from = (newest.active_from + renew_after).max(now + publish_ahead);
        let kid = add_key(conn, &self.master, now, active_from).await?;
        Ok(Some((kid, active_from)))
    }

    /// Reads the keys again for `now` (after a change, or when the view
    /// went stale).
    pub async fn reload(&self, pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<String> {
        let current = load_current(pool, &self.master, &self.schedule, now).await?;
        let kid = current.kid.clone();
        if let Ok(mut slot) = self.current.write() {
            *slot = Arc::new(current);
        }
        Ok(kid)
    }

    /// Whether the keys should be read again at `now`: the next key starts
    /// signing, or a retired one leaves the JWKS.
    pub fn stale(&self, now: DateTime<Utc>) -> bool {
        self.current()
            .and_then(|current| current.stale_at)
            .is_some_and(|at| now >= at)
    }

    fn current(&self) -> Option<Arc<Current>> {
        self.current.read().ok().map(|c| c.clone())
    }

    /// The JWKS: the next key (once made), the current one, and those
    /// retired recently enough that answers they signed may still be held.
    pub fn jwks(&self) -> Value {
        self.current()
            .map(|c| c.jwks.clone())
            .unwrap_or_else(|| json!({"keys": []}))
    }

    /// Every key this keyplane sealed: the keys whose signatures it believes.
    pub fn trusted(&self) -> Arc<TrustedKeys> {
        self.current()
            .map(|c| c.trusted.clone())
            .unwrap_or_default()
    }

    /// Signs `claims` as a JWT of type `typ` with the current key.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> anyhow::Result<String> {
        let current = self
            .current()
            .ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(current.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &current.encoding)?)
    }
}

async fn add_key(
    db: impl sqlx::PgExecutor<'_>,
    master: &MasterKey,
    now: DateTime<Utc>,
    active_from: DateTime<Utc>,
) -> anyhow::Result<String> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    let kid = URL_SAFE_NO_PAD.encode(&sha2_digest(&public)[..12]);
    let sealed = master.seal(seed.as_ref(), kid.as_bytes())?;
    signing_keys::insert(
        db,
        &signing_keys::SigningKey {
            kid: kid.clone(),
            public_key: public.to_vec(),
            sealed_private_key: sealed,
            created_at: now,
            active_from,
        },
    )
    .await?;
    tracing::info!(%kid, fingerprint = %fingerprint(&public), %active_from, "signing key made");
    Ok(kid)
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Why no current key could be loaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("no signing key stored")]
    NoKey,
    #[error(
        "signing key {0} cannot be unsealed: KEYPLANE_MASTER_KEY is not the key it was sealed with"
    )]
    NotOurs(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<keyplane_store::StoreError> for LoadError {
    fn from(err: keyplane_store::StoreError) -> Self {
        LoadError::Other(err.into())
    }
}

/// The key this keyplane sealed that signs at `now`, with the JWKS (the
/// next key, this one, and those retired within `retired_published`) and
/// every sealed key as trusted. A stored key the master key does not open,
/// or whose sealed half does not belong to its public half, is refused:
/// logged, never published or believed.
async fn load_current(
    pool: &PgPool,
    master: &MasterKey,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<Current, LoadError> {
    let keys = signing_keys::newest(pool, i64::MAX).await?;
    let mut sealed = Vec::with_capacity(keys.len());
    for key in &keys {
        match open_key(master, key) {
            Some(seed) => sealed.push((key, seed)),
            None => {
                tracing::error!(kid = %key.kid, "a stored signing key was not sealed by this keyplane's master key: refused")
            }
        }
    }
    // Newest first: those yet to sign, then the one signing, then retired ones.
    let signing = sealed.iter().position(|(key, _)| key.active_from <= now);
    let Some((newest, seed)) = signing.map(|at| &sealed[at]) else {
        return Err(match keys.first() {
            Some(key) => LoadError::NotOurs(key.kid.clone()),
            None => LoadError::NoKey,
        });
    };
    let signing = signing.unwrap_or_default();
    let der = ed25519_dalek::SigningKey::from_bytes(seed)
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?;
    let mut trusted = TrustedKeys::default();
    for (key, seed) in &sealed {
        let public = ed25519_dalek::SigningKey::from_bytes(seed)
            .verifying_key()
            .to_bytes();
        trusted.insert(&key.kid, public)?;
    }
    // A retired key stays published until `retired_published` after its
    // successor started signing.
    let mut published = Vec::new();
    let mut stale_at: Option<DateTime<Utc>> = None;
    let mut earliest = |at: DateTime<Utc>| {
        stale_at = Some(stale_at.map_or(at, |now: DateTime<Utc>| now.min(at)));
    };
    for (at, (key, _)) in sealed.iter().enumerate() {
        if at < signing {
            earliest(key.active_from);
            published.push(jwk(&key.kid, &key.public_key));
        } else if at == signing {
            published.push(jwk(&key.kid, &key.public_key));
        } else {
            let retired_until = sealed[at - 1].0.active_from + schedule.retired_published;
            if retired_until <= now {
                break;
            }
            earliest(retired_until);
            published.push(jwk(&key.kid, &key.public_key));
        }
    }
    Ok(Current {
        kid: newest.kid.clone(),
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        stale_at,
        jwks: json!({ "keys": published }),
        trusted: Arc::new(trusted),
    })
}

/// The private seed of `key`, if this master key sealed it for this key id
/// and it is the private half of the stored public key.
fn open_key(master: &MasterKey, key: &signing_keys::SigningKey) -> Option<Zeroizing<[u8; 32]>> {
    let opened = master.open(&key.sealed_private_key, key.kid.as_bytes())?;
    let seed: [u8; 32] = opened.as_slice().try_into().ok()?;
    let seed = Zeroizing::new(seed);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    (public.as_slice() == key.public_key.as_slice()).then_some(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_master_key_and_context() {
        let master = MasterKey::parse(&MasterKey::generate().unwrap()).unwrap();
        let sealed = master.seal(b"seed bytes", b"kid-1").unwrap();
        assert_eq!(
            master.open(&sealed, b"kid-1").unwrap().as_slice(),
            b"seed bytes"
        );
        assert!(master.open(&sealed, b"kid-2").is_none());
        let other = MasterKey::parse(&"ab".repeat(32)).unwrap();
        assert!(other.open(&sealed, b"kid-1").is_none());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(master.open(&tampered, b"kid-1").is_none());
    }

    #[test]
    fn master_keys_must_be_32_bytes() {
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse(&"0".repeat(63)).is_err());
        assert!(MasterKey::parse(&"0f".repeat(32)).is_ok());
    }
}
