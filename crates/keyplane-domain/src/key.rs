//! The key format: `<prefix><body><checksum>`.
//!
//! - prefix: the key's type, `kpa_` (admin), `kpi_` (instance), `kpn_` (node)
//!   or `kpe_` (enrollment);
//! - body: 32 base62 characters from the OS CSPRNG (190 bits);
//! - checksum: CRC32 of prefix and body, as 6 base62 characters, so a
//!   mistyped, truncated or re-typed key is refused without a network call.
//!
//! Only the SHA-256 [`KeyDigest`] is ever stored: the keys carry enough entropy
//! that a slow hash would buy nothing.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const PREFIX_LEN: usize = 4;
const BODY_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
/// The length of every key.
pub const KEY_LEN: usize = PREFIX_LEN + BODY_LEN + CHECKSUM_LEN;

/// What a key is for; its prefix says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// An operator's key for the management API.
    Admin,
    /// An instance's key, accepted by nodes.
    Instance,
    /// A node's key, for introspection and the revocation stream.
    Node,
    /// A one-time (or n-use) enrollment token.
    Enrollment,
    /// A person's session, after signing in with the identity provider.
    Session,
}

impl KeyKind {
    /// Every kind.
    pub const ALL: [KeyKind; 5] = [
        KeyKind::Admin,
        KeyKind::Instance,
        KeyKind::Node,
        KeyKind::Enrollment,
        KeyKind::Session,
    ];

    /// The prefix the key's text starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyKind::Admin => "kpa_",
            KeyKind::Instance => "kpi_",
            KeyKind::Node => "kpn_",
            KeyKind::Enrollment => "kpe_",
            KeyKind::Session => "kps_",
        }
    }

    fn from_prefix(prefix: &str) -> Option<KeyKind> {
        KeyKind::ALL.into_iter().find(|k| k.prefix() == prefix)
    }
}

/// Why a text is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a keyplane key at all, or of the wrong type.
    #[error("not a keyplane key of the expected type")]
    Malformed,
    /// Well-formed, but the checksum does not match: a typo or a truncation.
    #[error("the key's checksum does not match")]
    Checksum,
    /// The OS random source failed; no key was made.
    #[error("the system's random source failed")]
    Random,
}

/// A whole key. Its `Debug` and `Display` print only the masked form, and its
/// memory is wiped when dropped; [`KeySecret::expose`] is the one way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret {
    kind: KeyKind,
    text: Zeroizing<String>,
}

impl KeySecret {
    /// A new key of `kind` from the OS CSPRNG.
    pub fn generate(kind: KeyKind) -> Result<KeySecret, KeyError> {
        let mut text = Zeroizing::new(String::with_capacity(KEY_LEN));
        text.push_str(kind.prefix());
        let mut pool = Zeroizing::new([0u8; 64]);
        while text.len() < PREFIX_LEN + BODY_LEN {
            getrandom::fill(pool.as_mut()).map_err(|_| KeyError::Random)?;
            // Rejection sampling: 248 = 4 * 62, so every character is equally likely.
            for &byte in pool.iter().filter(|&&b| b < 248) {
                if text.len() == PREFIX_LEN + BODY_LEN {
                    break;
                }
                text.push(char::from(ALPHABET[usize::from(byte % 62)]));
            }
        }
        let checksum = checksum(&text);
        text.push_str(&checksum);
        Ok(KeySecret { kind, text })
    }

    /// Reads a key of any type, checking its form and checksum.
    pub fn parse(text: &str) -> Result<KeySecret, KeyError> {
        if text.len() != KEY_LEN || !text.is_ascii() {
            return Err(KeyError::Malformed);
        }
        let (prefix, rest) = text.split_at(PREFIX_LEN);
        let kind = KeyKind::from_prefix(prefix).ok_or(KeyError::Malformed)?;
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyError::Malformed);
        }
        let (signed, given) = text.split_at(PREFIX_LEN + BODY_LEN);
        if checksum(signed)
            .as_bytes()
            .ct_eq(given.as_bytes())
            .unwrap_u8()
            != 1
        {
            return Err(KeyError::Checksum);
        }
        Ok(KeySecret {
            kind,
            text: Zeroizing::new(text.to_owned()),
        })
    }

    /// Reads a key that must be of `kind`.
    pub fn parse_as(kind: KeyKind, text: &str) -> Result<KeySecret, KeyError> {
        let key = KeySecret::parse(text)?;
        if key.kind != kind {
            return Err(KeyError::Malformed);
        }
        Ok(key)
    }

    /// The key's type.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The whole key, for the one response that hands it out.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The digest stored and looked up in place of the key.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.text)
    }

    /// The key as it may be shown after creation: prefix and last four characters.
    pub fn masked(&self) -> String {
        let tail = &self.text[KEY_LEN - 4..];
        format!("{}…{tail}", self.kind.prefix())
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySecret({})", self.masked())
    }
}

impl fmt::Display for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// The SHA-256 of a key (or of any bearer secret), compared in constant time.
#[derive(Clone, Copy, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `secret`.
    pub fn of(secret: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(secret.as_bytes()).into())
    }

    /// Rebuilds a digest read from storage.
    pub fn from_bytes(bytes: &[u8]) -> Option<KeyDigest> {
        bytes.try_into().ok().map(KeyDigest)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// CRC32 of `signed`, as exactly six base62 characters.
fn checksum(signed: &str) -> String {
    let mut value = u64::from(crc32fast::hash(signed.as_bytes()));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Masks a text that may be a key, for logs of unparsed input: a recognisable
/// prefix and the last four characters at most, never the whole.
pub fn mask_untrusted(text: &str) -> String {
    let prefix = KeyKind::ALL
        .into_iter()
        .map(KeyKind::prefix)
        .find(|p| text.starts_with(p))
        .unwrap_or("");
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 12 {
        return format!("{prefix}…");
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{prefix}…{tail}")
}

/// Every whole keyplane key in `text` (a type prefix, its body and a
/// checksum that matches, not inside a longer word), with the byte offset
/// where it starts. The checksum makes a false find rare: a random string
/// of the right shape passes it about once in 57 billion.
pub fn find_keys(text: &str) -> impl Iterator<Item = (usize, KeySecret)> + '_ {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    (0..bytes.len().saturating_sub(KEY_LEN - 1)).filter_map(move |at| {
        let candidate = bytes.get(at..at + KEY_LEN)?;
        let starts_word = at == 0 || !word(bytes[at - 1]);
        let ends_word = bytes.get(at + KEY_LEN).is_none_or(|&b| !word(b));
        if !(starts_word && ends_word && candidate.get(3) == Some(&b'_')) {
            return None;
        }
        let candidate = std::str::from_utf8(candidate).ok()?;
        KeySecret::parse(candidate).ok().map(|key| (at, key))
    })
}

/// Replaces anything in `text` that looks like a keyplane key (a type prefix
/// followed by a run of letters and digits) with its masked form: the last
/// line of defence for text that echoes input, such as parser errors.
pub fn scrub_keys(text: &str) -> std::borrow::Cow<'_, str> {
    let starts = |at: usize| {
        KeyKind::ALL
            .into_iter()
            .any(|kind| text[at..].starts_with(kind.prefix()))
    };
    if !(0..text.len()).any(|at| text.is_char_boundary(at) && starts(at)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        if text.is_char_boundary(at) && starts(at) {
            let body = text[at + PREFIX_LEN..]
                .bytes()
                .take_while(u8::is_ascii_alphanumeric)
                .count();
            let end = at + PREFIX_LEN + body;
            out.push_str(&mask_untrusted(&text[at..end]));
            at = end;
            continue;
        }
        let ch = text[at..].chars().next().unwrap_or(' ');
        out.push(ch);
        at += ch.len_utf8();
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn any_kind() -> impl Strategy<Value = KeyKind> {
        prop::sample::select(KeyKind::ALL.to_vec())
    }

    #[test]
    fn a_key_is_masked_in_debug_and_display() {
        let key = KeySecret::generate(KeyKind::Instance).unwrap();
        let masked = key.masked();
        assert!(masked.starts_with("kpi_…") && masked.chars().count() == 9);
        assert_eq!(format!("{key}"), masked);
        assert!(!format!("{key:?}").contains(key.expose()));
        assert!(key.expose().ends_with(&masked[masked.len() - 4..]));
    }

    #[test]
    fn keys_have_the_documented_length_and_alphabet() {
        let key = KeySecret::generate(KeyKind::Admin).unwrap();
        assert_eq!(key.expose().len(), 42);
        assert!(key.expose()[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn keys_are_found_in_text_and_near_misses_are_not() {
        let admin = KeySecret::generate(KeyKind::Admin).unwrap();
        let node = KeySecret::generate(KeyKind::Node).unwrap();
        let mut broken = node.expose().to_owned();
        broken.replace_range(10..11, if &broken[10..11] == "a" { "b" } else { "a" });
        let text = format!(
            "TOKEN={}\n\"{}\" x{} {} {}",
            admin.expose(),
            node.expose(),
            admin.expose(),
            &broken,
            &node.expose()[..KEY_LEN - 1],
        );
        let found: Vec<String> = find_keys(&text)
            .map(|(_, key)| key.expose().to_owned())
            .collect();
        assert_eq!(found, [admin.expose(), node.expose()]);
        assert_eq!(find_keys("").count(), 0);
        assert_eq!(find_keys("é kpa_").count(), 0);
    }

    #[test]
    fn keys_inside_text_are_scrubbed() {
        let key = KeySecret::generate(KeyKind::Admin).unwrap();
        let text = format!(
            "name: invalid type: string \"{}\", expected a bool",
            key.expose()
        );
        let scrubbed = scrub_keys(&text);
        assert!(!scrubbed.contains(key.expose()));
        assert!(scrubbed.contains(&key.masked()));
        assert_eq!(scrub_keys("nothing to see"), "nothing to see");
        assert_eq!(scrub_keys("é kpi_"), "é kpi_…");
    }

    #[test]
    fn untrusted_text_is_masked_whatever_it_is() {
        assert_eq!(mask_untrusted("kpi_short"), "kpi_…");
        assert_eq!(mask_untrusted("some-long-bearer-token-1234"), "…1234");
    }

    proptest! {
        #[test]
        fn every_generated_key_parses_as_its_own_kind_only(kind in any_kind()) {
            let key = KeySecret::generate(kind).unwrap();
            let parsed = KeySecret::parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.kind(), kind);
            prop_assert_eq!(parsed.digest(), key.digest());
            for other in KeyKind::ALL.into_iter().filter(|k| *k != kind) {
                prop_assert!(KeySecret::parse_as(other, key.expose()).is_err());
                // Swapping the prefix does not make a key of another type.
                let swapped = format!("{}{}", other.prefix(), &key.expose()[4..]);
                prop_assert!(KeySecret::parse(&swapped).is_err());
            }
        }

        #[test]
        fn any_single_character_change_is_refused(
            kind in any_kind(),
            position in 0usize..KEY_LEN,
            replacement in prop::sample::select(ALPHABET.to_vec()),
        ) {
            let key = KeySecret::generate(kind).unwrap();
            let mut bytes = key.expose().as_bytes().to_vec();
            prop_assume!(bytes[position] != replacement);
            bytes[position] = replacement;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(KeySecret::parse(&changed).is_err());
        }

        #[test]
        fn truncated_or_extended_keys_are_refused(kind in any_kind(), cut in 1usize..KEY_LEN) {
            let key = KeySecret::generate(kind).unwrap();
            prop_assert!(KeySecret::parse(&key.expose()[..KEY_LEN - cut]).is_err());
            let extended = format!("{}A", key.expose());
            prop_assert!(KeySecret::parse(&extended).is_err());
        }

        #[test]
        fn arbitrary_text_never_panics_the_parser(text in ".{0,64}") {
            let _ = KeySecret::parse(&text);
        }
    }
}
