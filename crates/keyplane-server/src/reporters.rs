//! The public keys that sign leak reports: GitHub's secret scanning partner
//! program signs each report it sends (`POST /v1/leaks`) with ECDSA P-256
//! over SHA-256 of the raw body, naming the key in
//! `Github-Public-Key-Identifier` and carrying the DER signature, base64, in
//! `Github-Public-Key-Signature`. The keys come from a file in the format of
//! <https://api.github.com/meta/public_keys/secret_scanning>
//! (`KEYPLANE_LEAK_REPORT_KEYS`).

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

/// The most keys a file may hold.
const MAX_KEYS: usize = 64;
/// The longest signature header accepted (a DER P-256 signature is at most
/// 72 bytes, 96 in base64).
const MAX_SIGNATURE: usize = 256;

/// The keys whose signatures make a leak report authentic, by identifier.
#[derive(Debug, Clone, Default)]
pub struct ReporterKeys(Vec<(String, VerifyingKey)>);

#[derive(Deserialize)]
struct KeyFile {
    public_keys: Vec<PublicKey>,
}

#[derive(Deserialize)]
struct PublicKey {
    key_identifier: String,
    key: String,
}

impl ReporterKeys {
    /// Reads the keys from a file in GitHub's format.
    pub fn load(path: &Path) -> anyhow::Result<ReporterKeys> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the leak report keys from {}", path.display()))?;
        ReporterKeys::parse(&text)
            .with_context(|| format!("reading the leak report keys from {}", path.display()))
    }

    /// Reads the keys from JSON in GitHub's format.
    pub fn parse(json: &str) -> anyhow::Result<ReporterKeys> {
        let file: KeyFile = serde_json::from_str(json)
            .context("expected {\"public_keys\": [{\"key_identifier\", \"key\"}, ...]}")?;
        anyhow::ensure!(
            !file.public_keys.is_empty() && file.public_keys.len() <= MAX_KEYS,
            "expected 1 to {MAX_KEYS} public keys"
        );
        let keys = file
            .public_keys
            .into_iter()
            .map(|key| {
                let parsed = VerifyingKey::from_public_key_pem(&key.key)
                    .map_err(|err| anyhow::anyhow!("{err}"))
                    .with_context(|| {
                        format!(
                            "key {:?} is not a P-256 public key in PEM",
                            key.key_identifier
                        )
                    })?;
                Ok((key.key_identifier, parsed))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(ReporterKeys(keys))
    }

    /// Whether no keys are configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `signature` (base64 DER) is the key `identifier`'s over `body`.
    pub fn verify(&self, identifier: &str, signature: &str, body: &[u8]) -> bool {
        let Some((_, key)) = self.0.iter().find(|(id, _)| id == identifier) else {
            return false;
        };
        if signature.len() > MAX_SIGNATURE {
            return false;
        }
        let Ok(der) = STANDARD.decode(signature.trim()) else {
            return false;
        };
        Signature::from_der(&der).is_ok_and(|signature| key.verify(body, &signature).is_ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    use super::*;

    #[test]
    fn a_report_verifies_only_with_its_own_key_and_body() {
        let signing = SigningKey::from_slice(&[7; 32]).unwrap();
        let pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let file = serde_json::json!({"public_keys": [{"key_identifier": "k1", "key": pem, "is_current": true}]});
        let keys = ReporterKeys::parse(&file.to_string()).unwrap();
        let body = br#"[{"token":"x","type":"keyplane","url":"u","source":"content"}]"#;
        let signature: Signature = signing.sign(body);
        let signature = STANDARD.encode(signature.to_der().as_bytes());
        assert!(keys.verify("k1", &signature, body));
        assert!(!keys.verify("k2", &signature, body));
        assert!(!keys.verify("k1", &signature, b"[]"));
        assert!(!keys.verify("k1", "not base64!", body));
        assert!(ReporterKeys::parse("{\"public_keys\": []}").is_err());
        assert!(
            ReporterKeys::parse("{\"public_keys\": [{\"key_identifier\": \"a\", \"key\": \"x\"}]}")
                .is_err()
        );
    }
}
