//! Keys from before keyplane, and what a node may be handed as an instance key.
//!
//! A Cortex node kept its `apiKeys` in plain text in `.cortexrc`. Migrating
//! off them (`keyplanectl import cortex`) registers each as a *legacy* key of
//! an instance: hashed like every key, short-lived, and looked up only where
//! legacy keys are accepted (`KEYPLANE_ACCEPT_LEGACY_KEYS`, off by default).
//! A legacy key has no prefix and no checksum, so a node cannot tell one from
//! garbage without asking: that is why accepting them is a switch.

use std::fmt;

use zeroize::Zeroizing;

use crate::key::{KeyDigest, KeyError, KeyKind, KeySecret};

/// A static key of the kind Cortex's `apiKeys` held: 8 to 256 visible ASCII
/// characters, never starting with one of keyplane's own prefixes (a
/// mistyped `kpi_` key stays a refused `kpi_` key). Its `Debug` and
/// `Display` print only the masked form, and its memory is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyKey {
    text: Zeroizing<String>,
}

impl LegacyKey {
    /// The shortest legacy key accepted.
    pub const MIN_LEN: usize = 8;
    /// The longest legacy key accepted.
    pub const MAX_LEN: usize = 256;
    /// Below this length, a masked legacy key shows no character of it.
    const SHOWN_FROM_LEN: usize = 20;

    /// Reads a legacy key.
    pub fn parse(text: &str) -> Result<LegacyKey, KeyError> {
        let shaped = (Self::MIN_LEN..=Self::MAX_LEN).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_graphic());
        // `KPI_…` too: a key of ours re-typed in capitals is not a legacy one.
        let ours = KeyKind::ALL.into_iter().any(|kind| {
            text.get(..kind.prefix().len())
                .is_some_and(|head| head.eq_ignore_ascii_case(kind.prefix()))
        });
        if !shaped || ours {
            return Err(KeyError::Malformed);
        }
        Ok(LegacyKey {
            text: Zeroizing::new(text.to_owned()),
        })
    }

    /// The whole key, to send it for introspection.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The digest stored and looked up in place of the key.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.text)
    }

    /// Shorter than 16 characters: guessable, and (stored as an unsalted
    /// hash, as every key is) recoverable from a stolen database.
    pub fn weak(&self) -> bool {
        self.text.len() < 16
    }

    /// `legacy…` and, for a key of 20 characters or more, its last four.
    pub fn masked(&self) -> String {
        match self.text.len() >= Self::SHOWN_FROM_LEN {
            true => format!("legacy…{}", &self.text[self.text.len() - 4..]),
            false => "legacy…".to_owned(),
        }
    }
}

impl fmt::Debug for LegacyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LegacyKey({})", self.masked())
    }
}

impl fmt::Display for LegacyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// What a client presented as its instance key: a keyplane `kpi_` key or,
/// where legacy keys are accepted, a legacy one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceKey {
    /// A `kpi_` key, its checksum checked.
    Keyplane(KeySecret),
    /// A key imported from before keyplane.
    Legacy(LegacyKey),
}

impl InstanceKey {
    /// Reads `text` as a `kpi_` key, else (when `accept_legacy`) as a legacy
    /// key; a text that is neither is refused with the `kpi_` parser's reason.
    pub fn parse(text: &str, accept_legacy: bool) -> Result<InstanceKey, KeyError> {
        match KeySecret::parse_as(KeyKind::Instance, text) {
            Ok(key) => Ok(InstanceKey::Keyplane(key)),
            Err(err) if !accept_legacy => Err(err),
            Err(err) => LegacyKey::parse(text)
                .map(InstanceKey::Legacy)
                .map_err(|_| err),
        }
    }

    /// The whole key, to send it for introspection.
    pub fn expose(&self) -> &str {
        match self {
            InstanceKey::Keyplane(key) => key.expose(),
            InstanceKey::Legacy(key) => key.expose(),
        }
    }

    /// The digest it is stored and looked up by.
    pub fn digest(&self) -> KeyDigest {
        match self {
            InstanceKey::Keyplane(key) => key.digest(),
            InstanceKey::Legacy(key) => key.digest(),
        }
    }

    /// The form logs and answers may show.
    pub fn masked(&self) -> String {
        match self {
            InstanceKey::Keyplane(key) => key.masked(),
            InstanceKey::Legacy(key) => key.masked(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn legacy_keys_have_bounds_and_never_take_a_keyplane_prefix() {
        assert!(LegacyKey::parse("s3cr3t-cortex-key").is_ok());
        assert!(LegacyKey::parse("short").is_err());
        assert!(LegacyKey::parse(&"x".repeat(257)).is_err());
        assert!(LegacyKey::parse("has a space in it").is_err());
        assert!(LegacyKey::parse("tab\there-and-more").is_err());
        assert!(LegacyKey::parse("ünïcödé-key-text").is_err());
        for kind in KeyKind::ALL {
            let text = format!("{}looks-like-ours-but-is-not", kind.prefix());
            assert!(LegacyKey::parse(&text).is_err(), "{text}");
            assert!(LegacyKey::parse(&text.to_uppercase()).is_err(), "{text}");
        }
    }

    #[test]
    fn a_legacy_key_is_masked_and_short_ones_show_nothing() {
        let long = LegacyKey::parse("cortex-static-key-0123456789-wxyz").unwrap();
        assert_eq!(long.masked(), "legacy…wxyz");
        assert_eq!(format!("{long}"), "legacy…wxyz");
        assert!(!format!("{long:?}").contains("cortex-static"));
        let short = LegacyKey::parse("pass-1234").unwrap();
        assert_eq!(short.masked(), "legacy…");
    }

    #[test]
    fn a_mistyped_keyplane_key_is_not_taken_for_a_legacy_one() {
        let key = KeySecret::generate(KeyKind::Instance).unwrap();
        let mut typo = key.expose().to_owned();
        typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
        assert_eq!(InstanceKey::parse(&typo, true), Err(KeyError::Checksum));
        assert!(matches!(
            InstanceKey::parse(key.expose(), true),
            Ok(InstanceKey::Keyplane(_))
        ));
        assert!(matches!(
            InstanceKey::parse("a-cortex-key-123", true),
            Ok(InstanceKey::Legacy(_))
        ));
        assert_eq!(
            InstanceKey::parse("a-cortex-key-123", false),
            Err(KeyError::Malformed)
        );
        // Another kind of keyplane key is not an instance key, legacy or not.
        let admin = KeySecret::generate(KeyKind::Admin).unwrap();
        assert!(InstanceKey::parse(admin.expose(), true).is_err());
    }

    proptest! {
        #[test]
        fn the_digest_is_the_texts_whatever_the_kind(text in "[!-~]{8,64}") {
            if let Ok(key) = InstanceKey::parse(&text, true) {
                prop_assert_eq!(key.digest(), KeyDigest::of(&text));
                prop_assert!(!key.masked().contains(&text));
            }
        }
    }
}
