//! One error type for every handler, rendered as `application/problem+json`
//! (RFC 9457) with a stable `code` and the request's id.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::limits::Limited;
use crate::ops::Refusal;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(example = "https://keyplane.dev/problems/not_found")]
    pub type_uri: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// A stable, machine-readable code.
    #[schema(example = "not_found")]
    pub code: String,
    /// The request's id, as in the `X-Request-Id` header.
    pub request_id: String,
    /// The input field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read.
    #[error("{detail}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        detail: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// 401: no credential, or one that is not good; answered with
    /// `WWW-Authenticate: Bearer`.
    #[error("{detail}")]
    Unauthorized {
        /// Stable code.
        code: &'static str,
        /// What is wrong, without echoing the credential.
        detail: &'static str,
    },
    /// 401: a person's sign-in is too old for this operation (RFC 9470).
    #[error(
        "this operation needs a sign-in with MFA within the last {max_age} seconds: sign in again"
    )]
    StepUpRequired {
        /// How recent, in seconds.
        max_age: u64,
    },
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the resource's current state.
    #[error("{0}")]
    Conflict(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body is over the limit.
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    /// 415: the body is not JSON.
    #[error("expected a JSON body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422: the request is well-formed but a field's value is not acceptable.
    #[error("{detail}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What it expects.
        detail: String,
    },
    /// 422: well-formed, but key policy refuses it (a lifetime past the
    /// maximum, a scope outside the instance's ceiling). Audited.
    #[error("{detail}")]
    PolicyRefused {
        /// The field at fault.
        field: String,
        /// What the policy allows.
        detail: String,
    },
    /// 429: over a rate limit; try again after `retry_after` seconds.
    #[error("too many requests: try again in {retry_after} s")]
    TooManyRequests {
        /// Seconds until the budget allows another request (`Retry-After`).
        retry_after: u64,
    },
    /// 503: a dependency (the database) is not available.
    #[error("{detail}")]
    Unavailable {
        /// Stable code.
        code: &'static str,
        /// What is unavailable.
        detail: String,
    },
    /// 500: anything else. The cause is logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 for `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// The status it is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } | ApiError::StepUpRequired { .. } => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } | ApiError::PolicyRefused { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Unavailable { code, .. }
            | ApiError::Unauthorized { code, .. } => code,
            ApiError::StepUpRequired { .. } => "step_up_required",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Invalid { .. } => "invalid_field",
            ApiError::PolicyRefused { .. } => POLICY_REFUSED,
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

/// The code of a request that key policy refused.
pub(crate) const POLICY_REFUSED: &str = "policy_refused";

/// A problem waiting for its request id: handlers return it in the response's
/// extensions and the request-context middleware writes the body, so every
/// problem, whoever raised it, is rendered in one place.
#[derive(Debug, Clone)]
pub(crate) struct PendingProblem {
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self {
            // The one place the cause chain is logged; the span carries the request id.
            tracing::error!(error = ?err, "request failed");
        }
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(_) => {
                "an internal error occurred; quote the request_id when reporting it".to_owned()
            }
            other => other.to_string(),
        };
        let field = match &self {
            ApiError::Invalid { field, .. } | ApiError::PolicyRefused { field, .. } => {
                Some(field.clone())
            }
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        let mut response = status.into_response();
        if let ApiError::StepUpRequired { max_age } = &self {
            // RFC 9470: the client signs the person in again, no longer ago than max_age.
            let challenge = format!(
                r#"Bearer error="insufficient_user_authentication", error_description="a more recent sign-in with MFA is required", max_age="{max_age}""#
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        } else if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::TooManyRequests { retry_after } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let ApiError::Unavailable { .. } = &self {
            // A failover takes seconds: worth a retry soon.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response.extensions_mut().insert(PendingProblem {
            code: self.code(),
            detail,
            field,
        });
        response
    }
}

/// Writes the problem body of an error response: the one raised by a handler,
/// or a generic one for a bare status from the router or a middleware (404,
/// 405, 408, 413, ...).
pub(crate) fn render_problem(mut response: Response, request_id: &str) -> Response {
    let status = response.status();
    let pending = response.extensions_mut().remove::<PendingProblem>();
    let already_rendered = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    // A page for people (a refused sign-in) and an OAuth error (RFC 6749
    // §5.2, for terminals) say what went wrong themselves.
    let own_words = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"text/html") || v.as_bytes().starts_with(b"application/json")
        });
    if already_rendered || own_words || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let pending = pending.unwrap_or_else(|| generic_problem(status));
    let problem = Problem {
        type_uri: format!("https://keyplane.dev/problems/{}", pending.code),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        // Parser messages echo input; a key sent in the wrong place must not come back.
        detail: keyplane_domain::scrub_keys(&pending.detail).into_owned(),
        code: pending.code.to_owned(),
        request_id: request_id.to_owned(),
        field: pending.field,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let (mut parts, _) = response.into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

fn generic_problem(status: StatusCode) -> PendingProblem {
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not answer that method",
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("payload_too_large", "request body is larger than the limit")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        s if s.is_server_error() => (
            "internal_error",
            "an internal error occurred; quote the request_id when reporting it",
        ),
        _ => ("bad_request", "the request could not be served"),
    };
    PendingProblem {
        code,
        detail: detail.to_owned(),
        field: None,
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated { code, detail } => ApiError::Unauthorized { code, detail },
            Refusal::StepUp { max_age } => ApiError::StepUpRequired { max_age },
            Refusal::Forbidden(detail) => ApiError::Forbidden(detail),
            Refusal::NotFound(detail) => ApiError::NotFound(detail),
            Refusal::Conflict(detail) => ApiError::Conflict(detail),
            Refusal::Unreadable {
                code,
                detail,
                field,
            } => ApiError::BadRequest {
                code,
                detail,
                field: Some(field.to_owned()),
            },
            Refusal::Invalid { field, detail } => ApiError::Invalid { field, detail },
            Refusal::Policy { field, detail } => ApiError::PolicyRefused { field, detail },
            Refusal::Limited(limited) => limited.into(),
            Refusal::Unavailable { code, detail } => ApiError::Unavailable { code, detail },
            Refusal::Internal(err) => ApiError::Internal(err),
        }
    }
}

impl From<Limited> for ApiError {
    fn from(limited: Limited) -> Self {
        ApiError::TooManyRequests {
            retry_after: limited.retry_after,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(err) => {
                // serde names the field: "unknown field `x`", "missing field `name`",
                // "name: invalid type ..." — keep that text, it is the user's own input.
                let detail = std::error::Error::source(&err)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| err.body_text());
                ApiError::Invalid {
                    field: field_of(&detail).unwrap_or_else(|| "body".to_owned()),
                    detail,
                }
            }
            JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest {
                code: "malformed_json",
                detail: "the body is not valid JSON".to_owned(),
                field: Some("body".to_owned()),
            },
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(err) if err.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            other => ApiError::BadRequest {
                code: "bad_request",
                detail: other.body_text(),
                field: None,
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let detail = rejection.body_text();
        ApiError::BadRequest {
            code: "invalid_query",
            field: field_of(&detail),
            detail,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest {
            code: "invalid_path",
            detail: rejection.body_text(),
            field: Some("path".to_owned()),
        }
    }
}

/// Pulls the field name out of serde's messages ("unknown field `x`",
/// "missing field `x`", "x: invalid type ...").
fn field_of(message: &str) -> Option<String> {
    if let Some((path, _)) = message.split_once(": ") {
        let path = path.trim();
        let plain = !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
        if plain {
            return Some(path.to_owned());
        }
    }
    let start = message.find('`')?;
    let rest = &message[start + 1..];
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_out_of_serde_messages() {
        assert_eq!(
            field_of("unknown field `colour`, expected one of `name`").as_deref(),
            Some("colour")
        );
        assert_eq!(
            field_of("missing field `name` at line 1 column 2").as_deref(),
            Some("name")
        );
        assert_eq!(
            field_of("labels.team: invalid type: integer").as_deref(),
            Some("labels.team")
        );
        assert_eq!(
            field_of("name: invalid type: integer `42`").as_deref(),
            Some("name")
        );
        assert_eq!(field_of("expected value at line 1 column 1"), None);
    }
}
