//! The audit chain: each entry's hash covers a canonical encoding of its
//! fields and the previous entry's hash, so editing, deleting or reordering
//! any entry breaks every hash after it.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash that comes before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields of an entry that its hash covers.
#[derive(Debug, Clone, Serialize)]
pub struct ChainedFields<'a> {
    /// Its place in the chain, from 1.
    pub seq: i64,
    /// When, as RFC 3339 with microseconds (what PostgreSQL stores).
    pub at: &'a str,
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: &'a str,
    /// The kind of thing acted on.
    pub target_type: &'a str,
    /// Its id.
    pub target_id: Option<&'a str>,
    /// `success` or `denied`.
    pub outcome: &'a str,
    /// The request.
    pub request_id: Option<&'a str>,
    /// The client's address.
    pub client_ip: Option<&'a str>,
    /// The masked summary (JSON objects' keys are sorted when encoded).
    pub details: &'a Value,
}

/// The entry's hash: SHA-256 over a version tag, the canonical JSON of its
/// fields and the previous hash.
pub fn chain_hash(fields: &ChainedFields<'_>, prev: &[u8]) -> [u8; 32] {
    // serde_json sorts object keys (no preserve_order), so the encoding of
    // `details` does not depend on how it was built or stored.
    let encoded = serde_json::to_vec(fields).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(b"keyplane-audit-v1\n");
    hasher.update(&encoded);
    hasher.update(b"\n");
    hasher.update(prev);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields<'a>(details: &'a Value, actor: &'a str) -> ChainedFields<'a> {
        ChainedFields {
            seq: 1,
            at: "2026-11-27T07:00:00.000001Z",
            actor,
            action: "key.revoke",
            target_type: "api_key",
            target_id: Some("k"),
            outcome: "success",
            request_id: None,
            client_ip: None,
            details,
        }
    }

    #[test]
    fn the_hash_covers_every_field_and_the_previous_hash() {
        let details = json!({"b": 1, "a": [1, 2]});
        let base = chain_hash(&fields(&details, "bootstrap"), &GENESIS);
        assert_ne!(base, chain_hash(&fields(&details, "admin_key:x"), &GENESIS));
        assert_ne!(base, chain_hash(&fields(&details, "bootstrap"), &[1; 32]));
        assert_ne!(
            base,
            chain_hash(
                &fields(&json!({"b": 2, "a": [1, 2]}), "bootstrap"),
                &GENESIS
            )
        );
        // Key order in details does not matter; content does.
        let reordered: Value = serde_json::from_str(r#"{"a": [1, 2], "b": 1}"#).unwrap_or_default();
        assert_eq!(base, chain_hash(&fields(&reordered, "bootstrap"), &GENESIS));
    }
}
