//! `/v1/auth/…` and `/v1/sessions`: people sign in with the organisation's
//! identity provider (in a browser, or from a terminal through one), and
//! see and end their sessions.

use axum::Json;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{cookie, session_cookie, session_cookie_name, sign_in_cookie_name};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, ApiQuery, FormOrJson, OptionalJson};
use crate::ops::people::{
    Callback, DeviceAuthorization, DeviceToken, Purpose, RevokeAllRequest, RevokedSessions,
    SessionPage, SignedIn, WhoAmI, csrf_token, normalize_user_code,
};
use crate::ops::{Operator, Ops, Refusal, Visitor};
use crate::pagination::PageParams;
use crate::state::AppState;

/// Where to go after signing in.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoginParams {
    /// A path on keyplane's origin (default `/console/`).
    pub return_to: Option<String>,
    /// Authenticate again now, with MFA (for a dangerous operation).
    pub step_up: Option<bool>,
}

/// The identity provider's answer.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<String>,
    /// The sign-in's state.
    pub state: Option<String>,
    /// The provider's error code, when it refused.
    pub error: Option<String>,
    /// The provider's words for it (not shown: it may echo input).
    pub error_description: Option<String>,
}

/// A terminal's user code, as the person typed or followed it.
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct UserCodeParams {
    /// The code the terminal shows, e.g. `BDFG-HJKL`.
    pub user_code: Option<String>,
}

/// RFC 8628 §3.4: a terminal asking for its token.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `urn:ietf:params:oauth:grant-type:device_code`.
    pub grant_type: Option<String>,
    /// The device code `/v1/auth/device` answered.
    pub device_code: Option<String>,
    /// The client's id (any; keyplane's terminals are public clients).
    pub client_id: Option<String>,
}

/// RFC 8628 §3.1: a terminal starting a sign-in (no fields are needed).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DeviceRequest {
    /// The client's id (any; keyplane's terminals are public clients).
    pub client_id: Option<String>,
    /// Ignored: the person's role comes from their groups.
    pub scope: Option<String>,
}

/// A page of sessions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListSessionsParams {
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A cookie for keyplane's own origin: HttpOnly, `Secure` over HTTPS.
fn set_cookie(
    state: &AppState,
    name: &str,
    value: &str,
    same_site: &str,
    max_age: u64,
) -> HeaderValue {
    let secure = state
        .settings
        .oidc
        .as_ref()
        .is_some_and(|oidc| oidc.secure_cookies());
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// 302 (or 303 after a form) to `location`, with `cookies` set.
fn redirect(status: StatusCode, location: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut response = status.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, location);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        headers.append(SET_COOKIE, cookie);
    }
    response
}

/// A small page for people: the sign-in's outcome, or a form.
fn page(state: &AppState, status: StatusCode, title: &str, body_html: &str) -> Response {
    let form_action = state
        .settings
        .oidc
        .as_ref()
        .and_then(|oidc| reqwest::Url::parse(&oidc.issuer).ok())
        .map(|issuer| format!("'self' {}", issuer.origin().ascii_serialization()))
        .unwrap_or_else(|| "'self'".to_owned());
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; \
         base-uri 'none'; frame-ancestors 'none'"
    );
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>{title} · keyplane</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}}\
         code{{font-size:1.4rem;letter-spacing:.15em}}</style></head>\
         <body><h1>{title}</h1>{body_html}</body></html>\n",
        title = escape(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// A refused sign-in, as a page: the status its refusal has in the API.
fn refusal_page(state: &AppState, refusal: Refusal) -> Response {
    let (status, title) = match &refusal {
        Refusal::Forbidden(_) => (StatusCode::FORBIDDEN, "Sign-in refused"),
        Refusal::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Check the code"),
        Refusal::NotFound(_) => (StatusCode::NOT_FOUND, "Sign-in is not set up"),
        Refusal::Unavailable { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The identity provider is unavailable",
        ),
        Refusal::Limited(_) => (StatusCode::TOO_MANY_REQUESTS, "Too many sign-ins"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Sign-in failed"),
    };
    let detail = match &refusal {
        Refusal::Internal(err) => {
            tracing::error!(error = ?err, "sign-in failed");
            "keyplane could not finish the sign-in; try again".to_owned()
        }
        other => other.to_string(),
    };
    let mut response = page(
        state,
        status,
        title,
        &format!(
            "<p>{}</p><p><a href=\"/v1/auth/oidc/login\">Sign in again</a></p>",
            escape(&detail)
        ),
    );
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(state, sign_in_cookie_name(state), "", "Lax", 0),
    );
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Whether a form post came from keyplane's own pages: browsers say so in
/// `Sec-Fetch-Site` and `Origin`; a request that carries neither is not a
/// browser's cross-site post.
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let site_ok =
        header("sec-fetch-site").is_none_or(|site| matches!(site, "same-origin" | "none"));
    let origin_ok = header("origin").is_none_or(|origin| {
        state
            .settings
            .oidc
            .as_ref()
            .is_some_and(|oidc| oidc.public_origin() == origin)
    });
    site_ok && origin_ok
}

/// The sign-in cookie (the PKCE verifier): sent back on the provider's
/// redirect, a top-level navigation from another site, so `Lax`.
fn sign_in_started(state: &AppState, status: StatusCode, url: &str, verifier: &str) -> Response {
    let cookie = set_cookie(state, sign_in_cookie_name(state), verifier, "Lax", 600);
    redirect(status, url, vec![cookie])
}

/// Sign in: 302 to the identity provider (PKCE S256, state, nonce).
#[utoipa::path(
    get, path = "/v1/auth/oidc/login", operation_id = "sign_in", tag = "people",
    params(LoginParams),
    responses(
        (status = 302, description = "To the identity provider; sets the sign-in cookie"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The identity provider is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn sign_in(
    ops: Ops<Visitor>,
    ApiQuery(params): ApiQuery<LoginParams>,
) -> Result<Response, ApiError> {
    let purpose = match params.step_up {
        Some(true) => Purpose::StepUp,
        _ => Purpose::Login,
    };
    let started = ops
        .begin_sign_in(purpose, params.return_to.as_deref())
        .await?;
    Ok(sign_in_started(
        ops.state(),
        StatusCode::FOUND,
        &started.authorization_url,
        &started.verifier,
    ))
}

/// The identity provider's redirect: sets the session cookie and 302s to
/// `return_to`; a refused sign-in is a page saying why (and audited).
#[utoipa::path(
    get, path = "/v1/auth/oidc/callback", operation_id = "sign_in_callback", tag = "people",
    params(CallbackParams),
    responses(
        (status = 302, description = "Signed in: the session cookie is set"),
        (status = 200, description = "A terminal was approved", content_type = "text/html"),
        (status = "4XX", description = "Refused: a page saying why", content_type = "text/html"),
    ),
)]
pub async fn sign_in_callback(
    ops: Ops<Visitor>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<CallbackParams>,
) -> Response {
    let state = ops.state().clone();
    let verifier = cookie(&headers, sign_in_cookie_name(&state));
    let current = session_cookie(&headers, &state);
    let callback = Callback {
        state: params.state,
        code: params.code,
        error: params.error,
    };
    let clear = set_cookie(&state, sign_in_cookie_name(&state), "", "Lax", 0);
    match ops
        .finish_sign_in(verifier.as_deref(), callback, current.as_deref())
        .await
    {
        Ok(SignedIn::Browser {
            token,
            max_age,
            return_to,
        }) => {
            let session = set_cookie(
                &state,
                session_cookie_name(&state),
                token.expose(),
                "Strict",
                max_age.as_secs(),
            );
            redirect(StatusCode::FOUND, &return_to, vec![clear, session])
        }
        Ok(SignedIn::Device) => {
            let mut response = page(
                &state,
                StatusCode::OK,
                "Terminal signed in",
                "<p>Your terminal is signed in. You can close this page and return to it.</p>",
            );
            response.headers_mut().append(SET_COOKIE, clear);
            response
        }
        Err(refusal) => refusal_page(&state, refusal),
    }
}

/// Sign out: ends the calling session and clears its cookie.
#[utoipa::path(
    post, path = "/v1/auth/logout", operation_id = "sign_out", tag = "people",
    responses(
        (status = 204, description = "Signed out"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn sign_out(ops: Ops<Operator>) -> Result<Response, ApiError> {
    ops.sign_out().await?;
    let state = ops.state();
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(state, session_cookie_name(state), "", "Strict", 0),
    );
    Ok(response)
}

/// Who is calling: the person (or key) and role, when the last MFA sign-in
/// was, and, for a browser session, the CSRF token its changes carry in
/// `X-CSRF-Token`.
#[utoipa::path(
    get, path = "/v1/auth/session", operation_id = "who_am_i", tag = "people",
    responses(
        (status = 200, description = "The caller", body = WhoAmI),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn who_am_i(ops: Ops<Operator>, headers: HeaderMap) -> Json<WhoAmI> {
    let mut who = ops.who_am_i();
    let by_cookie = headers.get(axum::http::header::AUTHORIZATION).is_none();
    if by_cookie {
        who.csrf_token = session_cookie(&headers, ops.state()).map(|token| csrf_token(&token));
    }
    Json(who)
}

/// RFC 8628 device authorization: a terminal gets a device code to poll
/// with and a user code for the person to check in a browser.
#[utoipa::path(
    post, path = "/v1/auth/device", operation_id = "authorize_device", tag = "people",
    request_body(content = DeviceRequest, description = "Optional", content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The codes; `device_code` is a secret", body = DeviceAuthorization),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn authorize_device(ops: Ops<Visitor>) -> Result<Response, ApiError> {
    let answer = ops.authorize_device().await?;
    let mut response = Json(answer).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The page a person opens from the terminal: it shows the code to check
/// and signs in (with MFA, now) to approve it.
#[utoipa::path(
    get, path = "/v1/auth/device/verify", operation_id = "device_verification_page", tag = "people",
    params(UserCodeParams),
    responses((status = 200, description = "A page with the code and a sign-in button", content_type = "text/html")),
)]
pub async fn device_verification_page(
    ops: Ops<Visitor>,
    ApiQuery(params): ApiQuery<UserCodeParams>,
) -> Response {
    let code = params
        .user_code
        .as_deref()
        .map(normalize_user_code)
        .unwrap_or_default();
    let body = format!(
        "<p>A terminal asks to act as you in keyplane. Continue only if you started it \
         yourself and it shows this code:</p>\
         <form method=\"post\" action=\"/v1/auth/device/verify\">\
         <p><input name=\"user_code\" value=\"{}\" autocomplete=\"off\" required \
         style=\"font-size:1.4rem;letter-spacing:.15em\"/></p>\
         <p><button type=\"submit\">Sign in to approve</button></p></form>",
        escape(&code)
    );
    page(ops.state(), StatusCode::OK, "Sign in a terminal", &body)
}

/// Approve a terminal: 303 to the identity provider to sign in with MFA.
#[utoipa::path(
    post, path = "/v1/auth/device/verify", operation_id = "approve_device", tag = "people",
    request_body(content = UserCodeParams, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "To the identity provider"),
        (status = "4XX", description = "No terminal waits for this code: a page", content_type = "text/html"),
    ),
)]
pub async fn approve_device(
    ops: Ops<Visitor>,
    headers: HeaderMap,
    FormOrJson(form): FormOrJson<UserCodeParams>,
) -> Response {
    let state = ops.state().clone();
    if !same_origin(&state, &headers) {
        // Another site cannot send a person to approve its terminal.
        return refusal_page(
            &state,
            Refusal::Forbidden(
                "this form is sent from keyplane's own page only: open the link your \
                 terminal shows"
                    .to_owned(),
            ),
        );
    }
    let code = form.user_code.unwrap_or_default();
    match ops
        .begin_sign_in(Purpose::Device(code), Some("/v1/auth/device/verify"))
        .await
    {
        Ok(started) => sign_in_started(
            &state,
            StatusCode::SEE_OTHER,
            &started.authorization_url,
            &started.verifier,
        ),
        Err(refusal) => refusal_page(&state, refusal),
    }
}

/// RFC 8628 token request: a terminal polls until the person has signed
/// in, then gets its token (a session, for `KEYPLANE_DEVICE_TOKEN_TTL`).
#[utoipa::path(
    post, path = "/v1/auth/token", operation_id = "device_token", tag = "people",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The token, once", body = DeviceToken),
        (status = 400, description = "RFC 8628 errors: authorization_pending, slow_down, expired_token, access_denied, invalid_grant, unsupported_grant_type"),
    ),
)]
pub async fn device_token(
    ops: Ops<Visitor>,
    FormOrJson(form): FormOrJson<TokenRequest>,
) -> Result<Response, ApiError> {
    let oauth_error = |code: &str, description: &str| {
        let mut response = (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": code, "error_description": description })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    };
    match form.grant_type.as_deref() {
        Some(DEVICE_GRANT) => {}
        None => return Ok(oauth_error("invalid_request", "grant_type is required")),
        Some(_) => {
            return Ok(oauth_error(
                "unsupported_grant_type",
                "keyplane answers only the device code grant here",
            ));
        }
    }
    let Some(device_code) = form.device_code.filter(|c| !c.is_empty() && c.len() <= 128) else {
        return Ok(oauth_error("invalid_request", "device_code is required"));
    };
    match ops.poll_device(&device_code).await? {
        Ok(token) => {
            let mut response = Json(token).into_response();
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Err(wait) => Ok(oauth_error(wait.code(), wait.description())),
    }
}

/// Live sessions: the caller's own; an admin's, everyone's.
#[utoipa::path(
    get, path = "/v1/sessions", operation_id = "list_sessions", tag = "people",
    params(ListSessionsParams),
    responses(
        (status = 200, description = "A page of live sessions", body = SessionPage),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn list_sessions(
    ops: Ops<Operator>,
    ApiQuery(params): ApiQuery<ListSessionsParams>,
) -> Result<Json<SessionPage>, ApiError> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    };
    Ok(Json(ops.list_sessions(page).await?))
}

/// End a session: one's own, or (admins) anyone's. It stops working at once.
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", operation_id = "revoke_session", tag = "people",
    params(("id" = Uuid, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Ended"),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_session(
    ops: Ops<Operator>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    ops.revoke_session(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sign out everywhere: every session of the caller, or (admins) of the
/// person named by `subject`, ends at once.
#[utoipa::path(
    post, path = "/v1/sessions/revoke-all", operation_id = "revoke_all_sessions", tag = "people",
    request_body(content = RevokeAllRequest, description = "Optional"),
    responses(
        (status = 200, description = "How many ended", body = RevokedSessions),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_all_sessions(
    ops: Ops<Operator>,
    OptionalJson(body): OptionalJson<RevokeAllRequest>,
) -> Result<Json<RevokedSessions>, ApiError> {
    Ok(Json(ops.revoke_all_sessions(body).await?))
}
