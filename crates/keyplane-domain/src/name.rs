//! Names given by people: instances, keys, nodes, roles.

use std::fmt;

/// A display name: 1 to 128 characters, no control characters, no leading or
/// trailing white space.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

/// Why a text is not a [`Name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or only white space.
    #[error("must not be empty")]
    Empty,
    /// Over 128 characters.
    #[error("must be at most 128 characters")]
    TooLong,
    /// Carries control characters or surrounding white space.
    #[error("must not contain control characters or leading/trailing spaces")]
    BadCharacters,
}

impl Name {
    /// The most characters a name may have.
    pub const MAX_CHARS: usize = 128;

    /// Reads a name.
    pub fn parse(text: &str) -> Result<Name, NameError> {
        if text.trim().is_empty() {
            return Err(NameError::Empty);
        }
        if text.chars().count() > Name::MAX_CHARS {
            return Err(NameError::TooLong);
        }
        if text.chars().any(char::is_control) || text.trim() != text {
            return Err(NameError::BadCharacters);
        }
        Ok(Name(text.to_owned()))
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role's name: a slug, 1 to 64 characters of `a-z 0-9 - _`, starting with
/// a letter, since it is written in URLs (`PUT /v1/roles/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoleName(String);

/// Why a text is not a [`RoleName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected 1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter")]
pub struct RoleNameError;

impl RoleName {
    /// Reads a role name.
    pub fn parse(text: &str) -> Result<RoleName, RoleNameError> {
        let ok = (1..=64).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        ok.then(|| RoleName(text.to_owned())).ok_or(RoleNameError)
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_empty_long_and_control_characters() {
        assert!(Name::parse("jan-desktop 1").is_ok());
        assert!(Name::parse("Ünïcode ok").is_ok());
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse("   "), Err(NameError::Empty));
        assert_eq!(Name::parse(&"x".repeat(129)), Err(NameError::TooLong));
        assert!(Name::parse(&"é".repeat(128)).is_ok());
        assert_eq!(Name::parse("a\nb"), Err(NameError::BadCharacters));
        assert_eq!(Name::parse(" padded"), Err(NameError::BadCharacters));
    }

    #[test]
    fn role_names_are_url_safe_slugs() {
        assert!(RoleName::parse("inference-client").is_ok());
        for bad in ["", "Admin", "1role", "a b", "a/b", &"r".repeat(65)] {
            assert!(RoleName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
