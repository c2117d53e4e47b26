//! Denials in OpenAI's error shape, so OpenAI clients raise their usual
//! exceptions (`AuthenticationError`, `PermissionDeniedError`, ...).

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::Refusal;

/// `{"error": {"message", "type", "param", "code"}}` with `status`.
pub fn openai_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Body> {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl Refusal {
    /// The HTTP answer for this refusal: 400, 401, 403 or 503.
    pub fn to_response(&self) -> Response<Body> {
        match self {
            Refusal::InvalidKey => openai_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "Invalid API key: send a live keyplane key as Authorization: Bearer kpi_…",
            ),
            Refusal::MissingScope(scope) => openai_error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "insufficient_scope",
                &format!("This API key lacks the scope {scope}, which this route needs."),
            ),
            Refusal::RouteDenied => openai_error(
                StatusCode::FORBIDDEN,
                "permission_error",
                "route_not_allowed",
                "No route rule allows this request.",
            ),
            Refusal::BadPath(err) => openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_path",
                &format!("The request path is refused: {err}."),
            ),
            Refusal::Unavailable => openai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "keyplane_unavailable",
                "The API key cannot be checked right now; try again shortly.",
            ),
        }
    }
}
