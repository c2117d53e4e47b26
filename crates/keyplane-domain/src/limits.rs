//! Usage limits: how fast and how much a key may use, and which models.
//!
//! Keys and instances each carry [`Limits`] and, optionally, [`Models`]; a
//! key is held to the tighter of its own and its instance's. Nodes enforce
//! them locally (see the gate), so they travel in introspection answers.

use serde::{Deserialize, Serialize};

/// The largest value each limit takes: beyond these a number is a typo, and
/// every sum a node makes with them stays far from overflowing.
pub const MAX_RPM: u64 = 10_000_000;
/// See [`MAX_RPM`].
pub const MAX_TPM: u64 = 10_000_000_000;
/// See [`MAX_RPM`].
pub const MAX_DAILY_TOKENS: u64 = 10_000_000_000_000;
/// See [`MAX_RPM`].
pub const MAX_MONTHLY_TOKENS: u64 = 300_000_000_000_000;

/// At most this many model patterns per key or instance.
pub const MAX_MODELS: usize = 64;
/// At most this many bytes per model pattern.
pub const MAX_MODEL_LEN: usize = 128;

/// A limit that is not a positive integer within its bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be a positive integer no larger than {max}, or null for no limit")]
pub struct LimitError {
    /// `rpm`, `tpm`, `daily_tokens` or `monthly_tokens`.
    pub field: &'static str,
    /// Its bound.
    pub max: u64,
}

/// Rate limits and token budgets; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    /// Tokens per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_tokens: Option<u64>,
}

impl Limits {
    /// Checks numbers given as signed integers (as JSON carries them):
    /// each must be within `1..=` its bound.
    pub fn new(
        rpm: Option<i64>,
        tpm: Option<i64>,
        daily_tokens: Option<i64>,
        monthly_tokens: Option<i64>,
    ) -> Result<Limits, LimitError> {
        let check = |field: &'static str, max: u64, value: Option<i64>| match value {
            None => Ok(None),
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| (1..=max).contains(n))
                .map(Some)
                .ok_or(LimitError { field, max }),
        };
        Ok(Limits {
            rpm: check("rpm", MAX_RPM, rpm)?,
            tpm: check("tpm", MAX_TPM, tpm)?,
            daily_tokens: check("daily_tokens", MAX_DAILY_TOKENS, daily_tokens)?,
            monthly_tokens: check("monthly_tokens", MAX_MONTHLY_TOKENS, monthly_tokens)?,
        })
    }

    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    /// Whether any token limit (per minute, day or month) is set.
    pub fn limits_tokens(&self) -> bool {
        self.tpm.is_some() || self.daily_tokens.is_some() || self.monthly_tokens.is_some()
    }

    /// The tighter of `self` and `other`, limit by limit.
    pub fn tighter(&self, other: &Limits) -> Limits {
        fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Limits {
            rpm: min(self.rpm, other.rpm),
            tpm: min(self.tpm, other.tpm),
            daily_tokens: min(self.daily_tokens, other.daily_tokens),
            monthly_tokens: min(self.monthly_tokens, other.monthly_tokens),
        }
    }
}

/// A model pattern that is not a name or a name ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// More patterns than [`MAX_MODELS`].
    #[error("at most {MAX_MODELS} model patterns")]
    TooMany,
    /// Empty, too long, with whitespace or control characters, or with a
    /// `*` anywhere but at the end.
    #[error(
        "expected a model name or a name ending in * (e.g. llama3*): 1 to {MAX_MODEL_LEN} \
         visible characters, * only at the end"
    )]
    Pattern,
}

/// One entry of an allow-list: a model's exact name, or a prefix (`llama3*`;
/// `*` alone is every model).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelPattern {
    /// Exactly this name.
    Exact(String),
    /// Every name that starts with this.
    Prefix(String),
}

impl ModelPattern {
    /// Reads `text`: a name, or a name ending in `*`.
    pub fn parse(text: &str) -> Result<ModelPattern, ModelError> {
        let visible = |c: char| !c.is_whitespace() && !c.is_control();
        if text.is_empty() || text.len() > MAX_MODEL_LEN || !text.chars().all(visible) {
            return Err(ModelError::Pattern);
        }
        let (stem, prefix) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if stem.contains('*') {
            return Err(ModelError::Pattern);
        }
        let stem = stem.to_owned();
        Ok(if prefix {
            ModelPattern::Prefix(stem)
        } else {
            ModelPattern::Exact(stem)
        })
    }

    /// Whether `model` is one this pattern names.
    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelPattern::Exact(name) => name == model,
            ModelPattern::Prefix(stem) => model.starts_with(stem.as_str()),
        }
    }

    /// The models both patterns name, as one pattern (patterns of this
    /// shape are closed under intersection).
    fn and(&self, other: &ModelPattern) -> Option<ModelPattern> {
        use ModelPattern::{Exact, Prefix};
        match (self, other) {
            (Exact(a), Exact(b)) => (a == b).then(|| self.clone()),
            (Exact(name), Prefix(stem)) | (Prefix(stem), Exact(name)) => {
                name.starts_with(stem.as_str()).then(|| Exact(name.clone()))
            }
            (Prefix(a), Prefix(b)) if a.starts_with(b.as_str()) => Some(self.clone()),
            (Prefix(a), Prefix(b)) if b.starts_with(a.as_str()) => Some(other.clone()),
            (Prefix(_), Prefix(_)) => None,
        }
    }
}

impl std::fmt::Display for ModelPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelPattern::Exact(name) => f.write_str(name),
            ModelPattern::Prefix(stem) => write!(f, "{stem}*"),
        }
    }
}

/// A model allow-list. A key without one may use every model; an empty
/// list allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Models(Vec<ModelPattern>);

impl Models {
    /// Reads a list of patterns (duplicates dropped, order kept); the error
    /// names the index of the first bad one.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Models, (Option<usize>, ModelError)> {
        if list.len() > MAX_MODELS {
            return Err((None, ModelError::TooMany));
        }
        let mut patterns: Vec<ModelPattern> = Vec::with_capacity(list.len());
        for (index, text) in list.iter().enumerate() {
            let pattern = ModelPattern::parse(text.as_ref()).map_err(|e| (Some(index), e))?;
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        Ok(Models(patterns))
    }

    /// Reads patterns stored by keyplane itself: any that would not parse
    /// now is dropped, which narrows the list (fail closed).
    pub fn from_trusted<S: AsRef<str>>(list: &[S]) -> Models {
        Models(
            list.iter()
                .filter_map(|text| ModelPattern::parse(text.as_ref()).ok())
                .collect(),
        )
    }

    /// Whether `model` is on the list.
    pub fn allows(&self, model: &str) -> bool {
        self.0.iter().any(|pattern| pattern.matches(model))
    }

    /// The patterns, as text.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// The models both lists allow, where `None` is every model: what a key
    /// may use when it and its instance each have a list.
    pub fn both(a: Option<&Models>, b: Option<&Models>) -> Option<Models> {
        match (a, b) {
            (None, None) => None,
            (Some(list), None) | (None, Some(list)) => Some(list.clone()),
            (Some(a), Some(b)) => {
                let mut out = Vec::new();
                for x in &a.0 {
                    for y in &b.0 {
                        if let Some(pattern) = x.and(y)
                            && !out.contains(&pattern)
                        {
                            out.push(pattern);
                        }
                    }
                }
                Some(Models(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_must_be_positive_and_sane() {
        assert_eq!(
            Limits::new(Some(60), None, Some(1000), None),
            Ok(Limits {
                rpm: Some(60),
                daily_tokens: Some(1000),
                ..Limits::default()
            })
        );
        for (rpm, tpm) in [(Some(0), None), (Some(-1), None), (None, Some(i64::MAX))] {
            assert!(
                Limits::new(rpm, tpm, None, None).is_err(),
                "{rpm:?} {tpm:?}"
            );
        }
        let err = Limits::new(None, Some(-5), None, None).unwrap_err();
        assert_eq!(err.field, "tpm");
    }

    #[test]
    fn the_tighter_limit_wins_and_none_is_no_limit() {
        let key = Limits::new(Some(60), None, Some(500), None).unwrap();
        let instance = Limits::new(Some(30), Some(1000), Some(900), None).unwrap();
        assert_eq!(
            key.tighter(&instance),
            Limits::new(Some(30), Some(1000), Some(500), None).unwrap()
        );
        assert!(Limits::default().is_unlimited());
        assert!(!key.tighter(&Limits::default()).is_unlimited());
    }

    #[test]
    fn limits_read_and_write_as_json_without_nulls() {
        let limits = Limits::new(Some(60), None, None, None).unwrap();
        assert_eq!(serde_json::to_string(&limits).unwrap(), r#"{"rpm":60}"#);
        let back: Limits = serde_json::from_str("{}").unwrap();
        assert!(back.is_unlimited());
    }

    #[test]
    fn patterns_are_names_or_prefixes() {
        let models = Models::parse(&["llama3*", "mistral-7b", "llama3*"]).unwrap();
        assert_eq!(models.to_strings(), ["llama3*", "mistral-7b"]);
        assert!(models.allows("llama3.1-8b"));
        assert!(models.allows("mistral-7b"));
        assert!(!models.allows("mistral-7b-instruct"));
        assert!(!models.allows("gpt-4o"));
        assert!(Models::parse(&["*"]).unwrap().allows("anything"));
        assert!(!Models::parse::<&str>(&[]).unwrap().allows("anything"));
        for bad in ["", "a b", "ll*ama", "**", "x\u{0}"] {
            assert_eq!(
                Models::parse(&[bad]).unwrap_err(),
                (Some(0), ModelError::Pattern),
                "{bad:?}"
            );
        }
        let long = "m".repeat(MAX_MODEL_LEN + 1);
        assert!(Models::parse(&[long]).is_err());
        let many: Vec<String> = (0..=MAX_MODELS).map(|i| format!("m{i}")).collect();
        assert_eq!(
            Models::parse(&many).unwrap_err(),
            (None, ModelError::TooMany)
        );
    }

    #[test]
    fn two_lists_allow_what_both_allow() {
        let key = Models::parse(&["llama3*", "qwen2-7b"]).unwrap();
        let instance = Models::parse(&["llama3.1*", "qwen*", "phi3"]).unwrap();
        let both = Models::both(Some(&key), Some(&instance)).unwrap();
        assert_eq!(both.to_strings(), ["llama3.1*", "qwen2-7b"]);
        assert_eq!(Models::both(None, Some(&key)), Some(key.clone()));
        assert_eq!(Models::both(None, None), None);
    }

    fn pattern() -> impl Strategy<Value = String> {
        ("[ab]{0,3}", any::<bool>()).prop_map(|(stem, star)| match star {
            true => format!("{stem}*"),
            false if stem.is_empty() => "a".to_owned(),
            false => stem,
        })
    }

    proptest! {
        #[test]
        fn the_intersection_allows_exactly_what_both_allow(
            a in prop::collection::vec(pattern(), 0..4),
            b in prop::collection::vec(pattern(), 0..4),
            model in "[ab]{0,4}",
        ) {
            let (a, b) = (Models::parse(&a).unwrap(), Models::parse(&b).unwrap());
            let both = Models::both(Some(&a), Some(&b)).unwrap();
            prop_assert_eq!(both.allows(&model), a.allows(&model) && b.allows(&model));
        }
    }
}
