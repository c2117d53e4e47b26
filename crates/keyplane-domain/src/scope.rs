//! Scopes (`resource:action`) and the algebra of effective scopes.

use std::collections::BTreeSet;
use std::fmt;

/// The scopes keyplane knows from the start, covering OpenAI-compatible
/// servers and Cortex's whole API. Operators define more (`PUT
/// /v1/scopes/{name}`); a scope in neither is refused, so a typo
/// (`inference:caht`) can never be granted.
pub const CATALOG: [&str; 23] = [
    "inference:chat",
    "inference:embeddings",
    "inference:audio",
    "inference:images",
    "models:read",
    "models:write",
    "configs:admin",
    "configs:read",
    "engines:read",
    "engines:write",
    "hardware:read",
    "hardware:write",
    "threads:read",
    "threads:write",
    "messages:read",
    "messages:write",
    "assistants:read",
    "assistants:write",
    "files:read",
    "files:write",
    "system:read",
    "system:admin",
    "process:admin",
];

/// One permission a key can carry, e.g. `inference:chat`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

// `String` orders and hashes exactly as `str` does, so sets of scopes can be
// searched with a borrowed text.
impl std::borrow::Borrow<str> for Scope {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Why a text is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not of the form `resource:action`.
    #[error("expected a scope of the form resource:action, e.g. inference:chat")]
    Malformed,
    /// Well-formed but not one keyplane knows.
    #[error("unknown scope {0:?}: not built in ({known}) nor defined by an operator (PUT /v1/scopes/{{name}})", known = CATALOG.join(", "))]
    Unknown(String),
}

impl Scope {
    /// Reads a scope from the built-in catalog.
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        Scope::parse_with(text, &[] as &[&str])
    }

    /// Reads a scope from the built-in catalog or `defined` (operators' own).
    pub fn parse_with<S: AsRef<str>>(text: &str, defined: &[S]) -> Result<Scope, ScopeError> {
        let scope = Scope::well_formed(text)?;
        if !scope.is_built_in() && !defined.iter().any(|d| d.as_ref() == text) {
            let shown: String = text.chars().take(64).collect();
            return Err(ScopeError::Unknown(shown));
        }
        Ok(scope)
    }

    /// Reads any scope of the form `resource:action` (lowercase letters,
    /// digits, `_` and `-`; at most 64 characters), known or not.
    pub fn well_formed(text: &str) -> Result<Scope, ScopeError> {
        let well_formed = text.len() <= 64
            && text.split_once(':').is_some_and(|(resource, action)| {
                [resource, action].iter().all(|part| {
                    !part.is_empty()
                        && part.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                        })
                })
            });
        if !well_formed {
            return Err(ScopeError::Malformed);
        }
        Ok(Scope(text.to_owned()))
    }

    /// Whether keyplane knows it from the start.
    pub fn is_built_in(&self) -> bool {
        CATALOG.contains(&self.0.as_str())
    }

    /// The scope's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of scopes, kept sorted so answers and digests are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Reads every text as a built-in scope; the first bad one is the
    /// error, with its index.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<ScopeSet, (usize, ScopeError)> {
        ScopeSet::parse_with(texts, &[] as &[&str])
    }

    /// Reads every text as a scope, built in or `defined`; the first bad
    /// one is the error, with its index.
    pub fn parse_with<S: AsRef<str>, D: AsRef<str>>(
        texts: &[S],
        defined: &[D],
    ) -> Result<ScopeSet, (usize, ScopeError)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Scope::parse_with(t.as_ref(), defined).map_err(|e| (i, e)))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(ScopeSet)
    }

    /// Builds a set from scopes already read (e.g. from storage) without
    /// checking them against the catalog.
    pub fn from_trusted<S: AsRef<str>>(texts: &[S]) -> ScopeSet {
        ScopeSet(texts.iter().map(|t| Scope(t.as_ref().to_owned())).collect())
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    /// Whether every scope in `wanted` (space-separated, as nodes ask for
    /// them) is in this set. A scope keyplane does not know is never held, so
    /// this needs no parsing and allocates nothing: it is on the hot path.
    pub fn holds_all(&self, wanted: &str) -> bool {
        wanted
            .split_ascii_whitespace()
            .all(|scope| self.0.contains(scope))
    }

    /// Whether every scope of `other` is in this set.
    pub fn is_superset(&self, other: &ScopeSet) -> bool {
        self.0.is_superset(&other.0)
    }

    /// The scopes of `self` that `ceiling` lacks.
    pub fn outside(&self, ceiling: &ScopeSet) -> Vec<Scope> {
        self.0.difference(&ceiling.0).cloned().collect()
    }

    /// Both sets together.
    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.union(&other.0).cloned().collect())
    }

    /// Only the scopes both sets have.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    /// The scopes as texts, in order.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The space-separated form used by OAuth (`scope` in introspection).
    pub fn to_oauth(&self) -> String {
        self.to_strings().join(" ")
    }
}

/// A key's effective scopes: its own plus its roles', cut down to its
/// instance's ceiling.
pub fn effective_scopes<'a>(
    own: &ScopeSet,
    roles: impl IntoIterator<Item = &'a ScopeSet>,
    ceiling: &ScopeSet,
) -> ScopeSet {
    roles
        .into_iter()
        .fold(own.clone(), |all, role| all.union(role))
        .intersection(ceiling)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(texts: &[&str]) -> ScopeSet {
        ScopeSet::parse(texts).unwrap()
    }

    #[test]
    fn scopes_must_be_well_formed_and_known() {
        assert!(Scope::parse("inference:chat").is_ok());
        for malformed in [
            "",
            "chat",
            ":chat",
            "inference:",
            "Inference:chat",
            "a:b:c",
            "x y:z",
        ] {
            assert_eq!(
                Scope::parse(malformed),
                Err(ScopeError::Malformed),
                "{malformed:?}"
            );
        }
        assert!(matches!(
            Scope::parse("inference:caht"),
            Err(ScopeError::Unknown(_))
        ));
    }

    #[test]
    fn holds_all_reads_space_separated_scopes_and_never_holds_unknown_ones() {
        let held = set(&["inference:chat", "models:read"]);
        assert!(held.holds_all(""));
        assert!(held.holds_all("inference:chat"));
        assert!(held.holds_all(" models:read  inference:chat "));
        assert!(!held.holds_all("inference:chat models:write"));
        assert!(!held.holds_all("inference:caht"));
        assert!(!held.holds_all("inference:chat,models:read"));
    }

    #[test]
    fn effective_scopes_are_own_and_roles_cut_to_the_ceiling() {
        let own = set(&["models:read"]);
        let role = set(&["inference:chat", "inference:embeddings"]);
        let ceiling = set(&["inference:chat", "models:read", "configs:admin"]);
        let effective = effective_scopes(&own, [&role], &ceiling);
        assert_eq!(effective, set(&["inference:chat", "models:read"]));
        assert_eq!(effective.to_oauth(), "inference:chat models:read");
    }

    fn any_set() -> impl Strategy<Value = ScopeSet> {
        prop::sample::subsequence(CATALOG.to_vec(), 0..=CATALOG.len()).prop_map(|v| set(&v))
    }

    proptest! {
        #[test]
        fn effective_scopes_never_exceed_the_ceiling(own in any_set(), role in any_set(), ceiling in any_set()) {
            let effective = effective_scopes(&own, [&role], &ceiling);
            prop_assert!(ceiling.is_superset(&effective));
            prop_assert!(own.union(&role).is_superset(&effective));
        }
    }
}
