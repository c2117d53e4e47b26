//! Label selectors, as Kubernetes spells them: `env=prod,team!=ml`,
//! `tier in (gpu,cpu)`, `tier notin (edge)`, `canary`, `!canary`. Every
//! requirement must hold. `!=` and `notin` also match an instance without
//! the label.

use std::collections::{BTreeMap, BTreeSet};

/// The most requirements one selector may have.
pub const MAX_REQUIREMENTS: usize = 20;
/// The longest selector, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;

/// One requirement on one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` (or `key==value`).
    Equals(String, String),
    /// `key!=value`.
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, BTreeSet<String>),
    /// `key notin (a,b)`.
    NotIn(String, BTreeSet<String>),
    /// `key`: the label is there.
    Exists(String),
    /// `!key`: the label is not there.
    Absent(String),
}

/// A parsed selector: requirements that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Why a selector cannot be read; says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

fn error(text: impl Into<String>) -> SelectorError {
    SelectorError(text.into())
}

fn label_key(text: &str) -> Result<String, SelectorError> {
    let key = text.trim();
    let ok = (1..=63).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(error(format!(
            "{key:?} is not a label key (1 to 63 of a-z, A-Z, 0-9, '.', '_', '-', '/')"
        )))
    }
}

fn label_value(text: &str) -> Result<String, SelectorError> {
    let value = text.trim();
    if value.chars().count() > 256
        || value
            .chars()
            .any(|c| c.is_control() || matches!(c, '(' | ')' | '=' | '!' | ','))
    {
        return Err(error(format!("{value:?} is not a label value")));
    }
    Ok(value.to_owned())
}

/// `(a, b)`: a non-empty set of values.
fn value_set(text: &str) -> Result<BTreeSet<String>, SelectorError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| error("expected a list of values in parentheses, e.g. (gpu,cpu)"))?;
    let values = inner
        .split(',')
        .map(label_value)
        .collect::<Result<BTreeSet<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err(error("a list of values may not be empty"));
    }
    Ok(values)
}

/// Splits at the commas that are not inside parentheses.
fn top_level_parts(text: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err(error("parentheses do not nest in a selector")),
            ')' if depth == 1 => depth = 0,
            ')' => return Err(error("a ')' without its '('")),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(error("a '(' without its ')'"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(part: &str) -> Result<Requirement, SelectorError> {
    let part = part.trim();
    if part.is_empty() {
        return Err(error("an empty requirement (two commas in a row?)"));
    }
    if let Some((key, rest)) = part.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        if let Some(set) = rest.strip_prefix("notin") {
            return Ok(Requirement::NotIn(label_key(key)?, value_set(set)?));
        }
        if let Some(set) = rest.strip_prefix("in") {
            return Ok(Requirement::In(label_key(key)?, value_set(set)?));
        }
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(label_key(key)?, label_value(value)?));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(label_key(key)?, label_value(value)?));
    }
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::Absent(label_key(key)?));
    }
    if part.contains(char::is_whitespace) {
        return Err(error(format!(
            "{part:?}: expected key=value, key!=value, key in (...), key notin (...), key or !key"
        )));
    }
    Ok(Requirement::Exists(label_key(part)?))
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(error(format!(
                "a selector is at most {MAX_SELECTOR_LEN} bytes"
            )));
        }
        if text.trim().is_empty() {
            return Err(error("a selector names at least one requirement"));
        }
        let requirements = top_level_parts(text)?
            .into_iter()
            .map(requirement)
            .collect::<Result<Vec<_>, _>>()?;
        if requirements.len() > MAX_REQUIREMENTS {
            return Err(error(format!(
                "a selector has at most {MAX_REQUIREMENTS} requirements"
            )));
        }
        Ok(Selector { requirements })
    }
}

impl Selector {
    /// Its requirements.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// The `key=value` requirements, as one set of labels an instance must
    /// have (what an index on labels can answer), and the others.
    pub fn split(&self) -> (BTreeMap<String, String>, Vec<&Requirement>) {
        let mut equal = BTreeMap::new();
        let mut others = Vec::new();
        for requirement in &self.requirements {
            match requirement {
                Requirement::Equals(key, value) if !equal.contains_key(key) => {
                    equal.insert(key.clone(), value.clone());
                }
                other => others.push(other),
            }
        }
        (equal, others)
    }

    /// Whether it names a label instances must have (`key=value`,
    /// `key in (...)` or `key`): one made only of `!=`, `notin` and `!key`
    /// matches every instance without those labels, most of a fleet.
    pub fn names_a_label(&self) -> bool {
        self.requirements.iter().any(|r| {
            matches!(
                r,
                Requirement::Equals(..) | Requirement::In(..) | Requirement::Exists(_)
            )
        })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_kind_of_requirement_reads_and_matches() {
        let selector: Selector =
            "env=prod, team!=ml, tier in (gpu, cpu), zone notin (edge), canary, !legacy"
                .parse()
                .unwrap();
        assert_eq!(selector.requirements().len(), 6);
        let good = labels(&[("env", "prod"), ("tier", "gpu"), ("canary", "")]);
        assert!(selector.matches(&good));
        for bad in [
            labels(&[("env", "dev"), ("tier", "gpu"), ("canary", "")]),
            labels(&[
                ("env", "prod"),
                ("team", "ml"),
                ("tier", "gpu"),
                ("canary", ""),
            ]),
            labels(&[("env", "prod"), ("tier", "arm"), ("canary", "")]),
            labels(&[
                ("env", "prod"),
                ("tier", "gpu"),
                ("zone", "edge"),
                ("canary", ""),
            ]),
            labels(&[("env", "prod"), ("tier", "gpu")]),
            labels(&[
                ("env", "prod"),
                ("tier", "gpu"),
                ("canary", ""),
                ("legacy", "1"),
            ]),
        ] {
            assert!(!selector.matches(&bad), "{bad:?}");
        }
        let (equal, others) = selector.split();
        assert_eq!(equal, labels(&[("env", "prod")]));
        assert_eq!(others.len(), 5);
        assert!(selector.names_a_label());
        let negative: Selector = "team!=ml,!legacy,zone notin (edge)".parse().unwrap();
        assert!(!negative.names_a_label());
    }

    #[test]
    fn malformed_selectors_say_what_is_wrong() {
        for (text, says) in [
            ("", "at least one"),
            ("env=prod,,x=y", "empty requirement"),
            ("tier in gpu", "parentheses"),
            ("tier in (gpu", "without its ')'"),
            ("tier in ((gpu))", "do not nest"),
            ("tier in ()", "may not be empty"),
            ("en v=prod", "not a label key"),
            ("env=pr(od", "'(' without"),
            ("env = prod = x", "not a label value"),
            ("some thing", "expected key=value"),
        ] {
            let err = text.parse::<Selector>().unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        let long = format!("a={}", "x".repeat(MAX_SELECTOR_LEN));
        assert!(long.parse::<Selector>().is_err());
        let many = (0..=MAX_REQUIREMENTS)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(many.parse::<Selector>().is_err());
    }
}
