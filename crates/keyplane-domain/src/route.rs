//! Which scope each route of an inference server needs, shared by forward
//! auth and the gate.
//!
//! Rules read `METHOD /path=scope` (or `METHOD /path=public`); `*` as a method
//! matches any, `*` as a path segment matches one segment and a final `**`
//! matches the rest. The first matching rule wins; a route no rule matches is
//! denied.

use crate::scope::{Scope, ScopeError};

/// What a route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A key with this scope.
    Scope(Scope),
    /// Nothing: the route is public.
    Public,
    /// No rule names the route: deny it.
    Unmapped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    method: Option<String>,
    segments: Vec<String>,
    access: Access,
}

/// An ordered list of route rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMap(Vec<Rule>);

/// A rule that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not `METHOD /path=scope`.
    #[error("expected rules like `POST /v1/chat/completions=inference:chat`, got {0:?}")]
    Malformed(String),
    /// The scope is not one keyplane knows.
    #[error("{0}")]
    Scope(#[from] ScopeError),
}

/// The routes of OpenAI-compatible servers and Cortex, and their scopes.
const DEFAULTS: &str = "\
POST /v1/chat/completions=inference:chat,
POST /v1/completions=inference:chat,
POST /v1/embeddings=inference:embeddings,
POST /v1/audio/**=inference:audio,
POST /v1/images/**=inference:images,
GET /v1/models=models:read,
GET /v1/models/**=models:read,
POST /v1/models/**=models:write,
DELETE /v1/models/**=models:write,
* /v1/configs=configs:admin,
* /v1/configs/**=configs:admin";

impl RouteMap {
    /// Reads comma- or newline-separated rules.
    pub fn parse(text: &str) -> Result<RouteMap, RouteError> {
        text.split([',', '\n'])
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
            .map(parse_rule)
            .collect::<Result<Vec<_>, _>>()
            .map(RouteMap)
    }

    /// The default rules.
    pub fn defaults() -> RouteMap {
        // The defaults are a constant that the tests below parse.
        RouteMap::parse(DEFAULTS).unwrap_or(RouteMap(Vec::new()))
    }

    /// `self`'s rules, then `fallback`'s.
    pub fn then(mut self, fallback: RouteMap) -> RouteMap {
        self.0.extend(fallback.0);
        self
    }

    /// What `method` on `path` (query string ignored) needs.
    pub fn access(&self, method: &str, path: &str) -> Access {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // A path that climbs out of itself is never mapped.
        if segments.iter().any(|s| *s == ".." || *s == ".") {
            return Access::Unmapped;
        }
        self.0
            .iter()
            .find(|rule| {
                rule.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                    && matches(&rule.segments, &segments)
            })
            .map_or(Access::Unmapped, |rule| rule.access.clone())
    }
}

fn parse_rule(text: &str) -> Result<Rule, RouteError> {
    let malformed = || RouteError::Malformed(text.chars().take(100).collect());
    let (route, access) = text.rsplit_once('=').ok_or_else(malformed)?;
    let (method, path) = route.trim().split_once(' ').ok_or_else(malformed)?;
    let path = path.trim();
    if !path.starts_with('/') || method.is_empty() {
        return Err(malformed());
    }
    let access = match access.trim() {
        "public" => Access::Public,
        scope => Access::Scope(Scope::parse(scope)?),
    };
    Ok(Rule {
        method: (method != "*").then(|| method.to_ascii_uppercase()),
        segments: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        access,
    })
}

fn matches(pattern: &[String], path: &[&str]) -> bool {
    match (pattern.first().map(String::as_str), path.first()) {
        (Some("**"), _) => !path.is_empty(),
        (Some("*"), Some(_)) => matches(&pattern[1..], &path[1..]),
        (Some(want), Some(got)) => want == *got && matches(&pattern[1..], &path[1..]),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> Access {
        Access::Scope(Scope::parse(text).unwrap())
    }

    #[test]
    fn the_defaults_map_openai_and_cortex_routes() {
        let map = RouteMap::defaults();
        assert_eq!(
            map.access("POST", "/v1/chat/completions"),
            scope("inference:chat")
        );
        assert_eq!(
            map.access("post", "/v1/completions?x=1"),
            scope("inference:chat")
        );
        assert_eq!(
            map.access("POST", "/v1/embeddings"),
            scope("inference:embeddings")
        );
        assert_eq!(map.access("GET", "/v1/models"), scope("models:read"));
        assert_eq!(map.access("GET", "/v1/models/llama3"), scope("models:read"));
        assert_eq!(map.access("POST", "/v1/models/pull"), scope("models:write"));
        assert_eq!(
            map.access("DELETE", "/v1/models/llama3"),
            scope("models:write")
        );
        assert_eq!(map.access("PATCH", "/v1/configs"), scope("configs:admin"));
        assert_eq!(map.access("GET", "/v1/chat/completions"), Access::Unmapped);
        assert_eq!(map.access("POST", "/v1/shutdown"), Access::Unmapped);
        assert_eq!(map.access("GET", "/v1/models/../configs"), Access::Unmapped);
    }

    #[test]
    fn configured_rules_come_first_and_may_make_routes_public() {
        let map = RouteMap::parse("GET /v1/models=public, GET /health=public")
            .unwrap()
            .then(RouteMap::defaults());
        assert_eq!(map.access("GET", "/v1/models"), Access::Public);
        assert_eq!(map.access("GET", "/health"), Access::Public);
        assert_eq!(map.access("GET", "/v1/models/x"), scope("models:read"));
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(RouteMap::parse("/v1/chat=inference:chat").is_err());
        assert!(RouteMap::parse("POST /v1/chat").is_err());
        assert!(RouteMap::parse("POST /v1/chat=inference:caht").is_err());
        assert!(RouteMap::parse("POST v1/chat=inference:chat").is_err());
    }
}
