//! Which scope each route of an inference server needs, shared by forward
//! auth and the gate.
//!
//! Rules read `METHOD /path=scope` (or `METHOD /path=public`); `*` as a method
//! matches any, `*` as a path segment matches one segment and a final `**`
//! matches the rest. The first matching rule wins; a route no rule matches is
//! denied.
//!
//! Rules match the path as the upstream will act on it: percent-decoded. A
//! path whose shape depends on who decodes it (an encoded `/` or `\`, a `.`
//! or `..` segment, plain or encoded) is refused rather than guessed at,
//! since `/v1/models/%2e%2e/chat/completions` reads as a models route here
//! and as a chat route to a server that normalises after decoding.

use std::borrow::Cow;

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
    /// The path hides its shape (see [`decoded_segments`]): refuse it.
    BadPath(PathError),
}

/// Why a path is refused before any rule is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `.` or `..` segment, plain or percent-encoded.
    #[error("the path has a dot segment (`.` or `..`, plain or percent-encoded)")]
    DotSegment,
    /// `%2F`, `%5C` or a plain `\`: a separator the upstream may or may not split on.
    #[error("the path has an encoded slash or a backslash")]
    EncodedSeparator,
    /// A `%` not followed by two hex digits, an encoded NUL or control
    /// character, or bytes that are not UTF-8 once decoded.
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
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

/// The routes of OpenAI-compatible servers and Cortex's whole API, and
/// their scopes: reading and writing are separate scopes, messages are
/// matched before the threads they belong to, and stopping the server or its
/// processes needs an admin scope.
const DEFAULTS: &str = "\
POST /v1/chat/completions=inference:chat,
POST /v1/completions=inference:chat,
POST /v1/embeddings=inference:embeddings,
POST /v1/audio/**=inference:audio,
POST /v1/images/**=inference:images,
GET /v1/models=models:read,
GET /v1/models/**=models:read,
POST /v1/models/**=models:write,
PATCH /v1/models/**=models:write,
DELETE /v1/models/**=models:write,
* /v1/configs=configs:admin,
* /v1/configs/**=configs:admin,
GET /v1/engines=engines:read,
GET /v1/engines/**=engines:read,
* /v1/engines/**=engines:write,
GET /v1/hardware=hardware:read,
GET /v1/hardware/**=hardware:read,
* /v1/hardware/**=hardware:write,
GET /v1/threads/*/messages=messages:read,
GET /v1/threads/*/messages/**=messages:read,
* /v1/threads/*/messages=messages:write,
* /v1/threads/*/messages/**=messages:write,
GET /v1/threads=threads:read,
GET /v1/threads/**=threads:read,
* /v1/threads=threads:write,
* /v1/threads/**=threads:write,
GET /v1/assistants=assistants:read,
GET /v1/assistants/**=assistants:read,
* /v1/assistants=assistants:write,
* /v1/assistants/**=assistants:write,
GET /v1/files=files:read,
GET /v1/files/**=files:read,
* /v1/files=files:write,
* /v1/files/**=files:write,
GET /v1/system=system:read,
GET /v1/system/**=system:read,
* /v1/system=system:admin,
* /v1/system/**=system:admin,
* /processManager/**=process:admin,
* /processmanager/**=process:admin";

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

    /// The scopes rules name that are not built in: keys get them only once
    /// an operator defines them (so a typo denies its routes; worth a warning).
    pub fn scopes_not_built_in(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .0
            .iter()
            .filter_map(|rule| match &rule.access {
                Access::Scope(scope) if !scope.is_built_in() => Some(scope.as_str().to_owned()),
                _ => None,
            })
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// Whether any rule makes a route public.
    pub fn has_public(&self) -> bool {
        self.0.iter().any(|rule| rule.access == Access::Public)
    }

    /// `self`'s rules, then `fallback`'s.
    pub fn then(mut self, fallback: RouteMap) -> RouteMap {
        self.0.extend(fallback.0);
        self
    }

    /// What `method` on `path` (as sent, query string ignored) needs.
    pub fn access(&self, method: &str, path: &str) -> Access {
        let segments = match decoded_segments(path) {
            Ok(segments) => segments,
            Err(err) => return Access::BadPath(err),
        };
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
        scope => Access::Scope(Scope::well_formed(scope)?),
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

/// The segments of `path` (as sent: the query string and fragment are cut
/// off), each percent-decoded; empty segments (`//`) are skipped. Borrowed
/// unless a segment had to be decoded.
pub fn decoded_segments(path: &str) -> Result<Vec<Cow<'_, str>>, PathError> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.contains('\\') {
        return Err(PathError::EncodedSeparator);
    }
    let mut segments = Vec::with_capacity(8);
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let segment = percent_decode(raw)?;
        if segment.contains(['/', '\\']) {
            return Err(PathError::EncodedSeparator);
        }
        if segment == "." || segment == ".." {
            return Err(PathError::DotSegment);
        }
        segments.push(segment);
    }
    Ok(segments)
}

/// Decodes `%XX` escapes; refuses bad escapes, control characters and
/// bytes that are not UTF-8.
fn percent_decode(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.contains('%') {
        return match raw.chars().any(char::is_control) {
            true => Err(PathError::BadEncoding),
            false => Ok(Cow::Borrowed(raw)),
        };
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| PathError::BadEncoding)?;
    match text.chars().any(char::is_control) {
        true => Err(PathError::BadEncoding),
        false => Ok(Cow::Owned(text)),
    }
}

fn matches(pattern: &[String], path: &[Cow<'_, str>]) -> bool {
    match (pattern.first().map(String::as_str), path.first()) {
        (Some("**"), _) => !path.is_empty(),
        (Some("*"), Some(_)) => matches(&pattern[1..], &path[1..]),
        (Some(want), Some(got)) => want == got && matches(&pattern[1..], &path[1..]),
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
        assert_eq!(
            map.access("PATCH", "/v1/models/llama3"),
            scope("models:write")
        );
        for (method, path, wanted) in [
            ("GET", "/v1/engines", "engines:read"),
            ("GET", "/v1/engines/llama-cpp/releases", "engines:read"),
            ("POST", "/v1/engines/llama-cpp/install", "engines:write"),
            ("DELETE", "/v1/engines/llama-cpp/load", "engines:write"),
            ("GET", "/v1/hardware", "hardware:read"),
            ("POST", "/v1/hardware/activate", "hardware:write"),
            ("GET", "/v1/threads", "threads:read"),
            ("POST", "/v1/threads", "threads:write"),
            ("PATCH", "/v1/threads/t1", "threads:write"),
            ("GET", "/v1/threads/t1/messages", "messages:read"),
            ("POST", "/v1/threads/t1/messages", "messages:write"),
            ("DELETE", "/v1/threads/t1/messages/m1", "messages:write"),
            ("GET", "/v1/assistants/a1", "assistants:read"),
            ("POST", "/v1/assistants", "assistants:write"),
            ("GET", "/v1/files/f1/content", "files:read"),
            ("POST", "/v1/files", "files:write"),
            ("GET", "/v1/system/events/hardware", "system:read"),
            ("DELETE", "/v1/system", "system:admin"),
            ("DELETE", "/processManager/destroy", "process:admin"),
        ] {
            assert_eq!(map.access(method, path), scope(wanted), "{method} {path}");
        }
        assert!(map.scopes_not_built_in().is_empty());
        assert_eq!(map.access("GET", "/v1/chat/completions"), Access::Unmapped);
        assert_eq!(map.access("POST", "/v1/shutdown"), Access::Unmapped);
        assert_eq!(
            map.access("GET", "/v1/models/../configs"),
            Access::BadPath(PathError::DotSegment)
        );
    }

    #[test]
    fn rules_match_the_decoded_path() {
        let map = RouteMap::defaults();
        assert_eq!(
            map.access("POST", "/v1/chat/%63ompletions"),
            scope("inference:chat"),
            "an escaped letter is the letter"
        );
        assert_eq!(
            map.access("POST", "/v1//chat/completions"),
            scope("inference:chat")
        );
    }

    #[test]
    fn paths_whose_shape_depends_on_the_decoder_are_refused() {
        let map = RouteMap::defaults();
        for (path, why) in [
            ("/v1/models/%2e%2e/chat/completions", PathError::DotSegment),
            ("/v1/models/%2E./chat/completions", PathError::DotSegment),
            ("/v1/models/./x", PathError::DotSegment),
            (
                "/v1/models/..%2fchat/completions",
                PathError::EncodedSeparator,
            ),
            ("/v1/models/x%2Fy", PathError::EncodedSeparator),
            ("/v1/models/x%5cy", PathError::EncodedSeparator),
            ("/v1/models\\..\\chat", PathError::EncodedSeparator),
            ("/v1/models/%zz", PathError::BadEncoding),
            ("/v1/models/%2", PathError::BadEncoding),
            ("/v1/models/%00", PathError::BadEncoding),
            ("/v1/models/%ff", PathError::BadEncoding),
        ] {
            assert_eq!(map.access("GET", path), Access::BadPath(why), "{path}");
        }
        assert_eq!(
            map.access("GET", "/v1/models?next=../../configs"),
            scope("models:read"),
            "the query string is not the path"
        );
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
        assert!(RouteMap::parse("POST /v1/chat=Inference Chat").is_err());
        assert!(RouteMap::parse("POST v1/chat=inference:chat").is_err());
    }

    #[test]
    fn rules_may_name_operators_scopes_and_say_which_are_not_built_in() {
        let map = RouteMap::parse("POST /v1/rerank=inference:rerank, POST /v1/x=inference:caht")
            .unwrap()
            .then(RouteMap::defaults());
        assert_eq!(
            map.access("POST", "/v1/rerank"),
            Access::Scope(Scope::well_formed("inference:rerank").unwrap())
        );
        assert_eq!(
            map.scopes_not_built_in(),
            ["inference:caht", "inference:rerank"]
        );
    }
}
