//! Signed introspection answers (RFC 9701): Ed25519 keys whose private
//! halves are sealed at rest with the master key, served as a JWKS that
//! carries the current key and the previous one, so a rotation never breaks
//! a node that fetched the JWKS a moment ago.

use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyplane_store::signing_keys;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use zeroize::Zeroizing;

/// The key that seals signing keys at rest: 32 bytes, given in base64 or hex.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
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
        Ok(MasterKey(Zeroizing::new(key)))
    }

    /// A fresh random master key, as base64 (for `dev`).
    pub fn generate() -> Result<String, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut())?;
        Ok(STANDARD.encode(bytes.as_ref()))
    }

    /// Seals `plain`, bound to `context` (the key id), as nonce + ciphertext.
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

    /// Opens what [`MasterKey::seal`] sealed with the same key and context.
    pub(crate) fn open(&self, sealed: &[u8], context: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, body) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let cipher = ChaCha20Poly1305::new(self.0.as_ref().into());
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
}

/// The key that signs now, and the JWKS to verify with.
struct Current {
    kid: String,
    encoding: EncodingKey,
    jwks: Value,
}

/// Signs answers with the current key; cheap to clone.
#[derive(Clone)]
pub struct Signer {
    current: Arc<RwLock<Arc<Current>>>,
    master: Arc<MasterKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// Loads the newest signing key, making the first one if there is none,
    /// and a new one when the newest is older than `rotate_after`.
    pub async fn load(
        pool: &PgPool,
        master: MasterKey,
        rotate_after: chrono::Duration,
    ) -> anyhow::Result<Signer> {
        let master = Arc::new(master);
        let newest = signing_keys::newest(pool, 1).await?;
        let stale = newest
            .first()
            .is_none_or(|key| Utc::now() - key.created_at > rotate_after);
        if stale {
            add_key(pool, &master, Utc::now()).await?;
        }
        let current = load_current(pool, &master).await?;
        Ok(Signer {
            current: Arc::new(RwLock::new(Arc::new(current))),
            master,
        })
    }

    /// Makes a new signing key in the caller's transaction; once committed,
    /// [`Signer::reload`] makes it current and the previous one stays in the JWKS.
    pub async fn add_key(&self, conn: &mut sqlx::PgConnection) -> anyhow::Result<String> {
        add_key(conn, &self.master, Utc::now()).await
    }

    /// Picks up the newest key (after another replica rotated).
    pub async fn reload(&self, pool: &PgPool) -> anyhow::Result<String> {
        let current = load_current(pool, &self.master).await?;
        let kid = current.kid.clone();
        if let Ok(mut slot) = self.current.write() {
            *slot = Arc::new(current);
        }
        Ok(kid)
    }

    fn current(&self) -> Option<Arc<Current>> {
        self.current.read().ok().map(|c| c.clone())
    }

    /// The JWKS: the current key and the previous one.
    pub fn jwks(&self) -> Value {
        self.current()
            .map(|c| c.jwks.clone())
            .unwrap_or_else(|| json!({"keys": []}))
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
        },
    )
    .await?;
    Ok(kid)
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

async fn load_current(pool: &PgPool, master: &MasterKey) -> anyhow::Result<Current> {
    let keys = signing_keys::newest(pool, 2).await?;
    let newest = keys
        .first()
        .ok_or_else(|| anyhow::anyhow!("no signing key stored"))?;
    let seed = master
        .open(&newest.sealed_private_key, newest.kid.as_bytes())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "signing key {} cannot be unsealed: KEYPLANE_MASTER_KEY is not the key it was sealed with",
                newest.kid
            )
        })?;
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("signing key {} is corrupt", newest.kid))?;
    let der = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?;
    let jwks = json!({
        "keys": keys.iter().map(|key| json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&key.public_key),
            "kid": key.kid,
            "use": "sig",
            "alg": "EdDSA",
        })).collect::<Vec<_>>()
    });
    Ok(Current {
        kid: newest.kid.clone(),
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwks,
    })
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
