//! Turning input fields into domain types; each refusal names the field.

use std::collections::BTreeMap;

use ipnet::IpNet;
use keyplane_domain::{KeySecret, Name, ScopeSet};

use crate::ops::Refusal;

/// The most entries any list field (scopes, roles, audience, CIDRs, labels) may have.
pub const MAX_LIST: usize = 64;

/// A [`Name`] from `field`. A whole keyplane key is refused: pasted into a
/// name it would be stored, listed and audited in clear.
pub fn name(field: &str, text: &str) -> Result<Name, Refusal> {
    if KeySecret::parse(text.trim()).is_ok() {
        return Err(Refusal::invalid(
            field,
            format!("{field} is a keyplane key; keys never go in names"),
        ));
    }
    Name::parse(text).map_err(|err| Refusal::invalid(field, format!("{field} {err}")))
}

/// Free text of at most 1024 characters, without control characters other
/// than new lines and tabs.
pub fn description(text: Option<String>) -> Result<String, Refusal> {
    let text = text.unwrap_or_default();
    if text.chars().count() > 1024 {
        return Err(Refusal::invalid(
            "description",
            "description must be at most 1024 characters",
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Refusal::invalid(
            "description",
            "description must not contain control characters",
        ));
    }
    Ok(text)
}

/// At most [`MAX_LIST`] entries.
pub fn bounded<T>(field: &str, items: &[T]) -> Result<(), Refusal> {
    if items.len() > MAX_LIST {
        return Err(Refusal::invalid(
            field,
            format!("{field} may have at most {MAX_LIST} entries"),
        ));
    }
    Ok(())
}

/// Scopes from the catalog, built in or `defined` by operators; the first
/// bad one is named with its index.
pub fn scopes(field: &str, texts: &[String], defined: &[String]) -> Result<ScopeSet, Refusal> {
    bounded(field, texts)?;
    ScopeSet::parse_with(texts, defined)
        .map_err(|(index, err)| Refusal::invalid(format!("{field}[{index}]"), err.to_string()))
}

/// Labels: at most 64, keys of 1 to 63 characters of `a-z A-Z 0-9 . _ - /`,
/// string values of at most 256 characters.
pub fn labels(labels: Option<BTreeMap<String, String>>) -> Result<serde_json::Value, Refusal> {
    let labels = labels.unwrap_or_default();
    if labels.len() > MAX_LIST {
        return Err(Refusal::invalid(
            "labels",
            format!("labels may have at most {MAX_LIST} entries"),
        ));
    }
    for (key, value) in &labels {
        let key_ok = (1..=63).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(Refusal::invalid(
                "labels",
                "label keys must be 1 to 63 characters of a-z, A-Z, 0-9, '.', '_', '-' and '/'",
            ));
        }
        if value.chars().count() > 256 || value.chars().any(char::is_control) {
            return Err(Refusal::invalid(
                format!("labels.{key}"),
                "label values must be at most 256 characters, without control characters",
            ));
        }
    }
    Ok(serde_json::to_value(labels).unwrap_or_default())
}

/// CIDRs (IPv4 or IPv6), stored in canonical form (`10.1.2.3/8` becomes `10.0.0.0/8`).
pub fn cidrs(texts: &[String]) -> Result<Vec<String>, Refusal> {
    bounded("allowed_cidrs", texts)?;
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|net| net.trunc().to_string())
                .map_err(|_| {
                    Refusal::invalid(
                        format!("allowed_cidrs[{index}]"),
                        "expected an IPv4 or IPv6 network, e.g. 10.0.0.0/8 or fd00::/8",
                    )
                })
        })
        .collect()
}

/// Deserializes a field that may be absent (`None`, with `#[serde(default)]`),
/// null (`Some(None)`) or a value (`Some(Some(_))`), for changes where null
/// means "back to the default".
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// A label selector (`env=prod,tier in (gpu,cpu)`), as the database asks it.
pub fn selector(field: &str, text: &str) -> Result<keyplane_store::instances::LabelQuery, Refusal> {
    let selector: keyplane_domain::Selector = text
        .parse()
        .map_err(|err: keyplane_domain::SelectorError| Refusal::invalid(field, err.to_string()))?;
    Ok((&selector).into())
}

/// A duration from `field`: seconds, or a number with a unit (`30d`).
pub fn duration(field: &str, text: &str) -> Result<chrono::Duration, Refusal> {
    keyplane_domain::parse_duration(text)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .ok_or_else(|| {
            Refusal::invalid(
                field,
                format!("{field}: {}", keyplane_domain::DurationError),
            )
        })
}
