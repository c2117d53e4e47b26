//! Extractors whose rejections are [`ApiError`]s, so malformed input gets the
//! same problem+json as every other error, with the field named.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body: an object, whatever serde would also accept (a struct read
/// from an array by field order is not an input anyone means to send).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        object(&json_body(request, state).await?).map(ApiJson)
    }
}

/// A JSON body of any shape (an object or a list), with the bytes it was
/// read from, for a caller that checks a signature over them.
#[derive(Debug)]
pub struct SignedJson<T>(pub T, pub Bytes);

impl<T, S> FromRequest<S> for SignedJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_body(request, state).await?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(SignedJson(value, bytes))
    }
}

/// The whole body of a request that says it is JSON.
async fn json_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    if !is_json(&request) {
        return Err(ApiError::UnsupportedMediaType);
    }
    read_body(request, state).await
}

/// Reads the whole body, within the size limit.
async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest {
                    code: "bad_request",
                    detail: "the body could not be read".to_owned(),
                    field: None,
                }
            }
        })
}

/// Deserialises a JSON object; valid JSON of another kind is a 422 on `body`.
fn object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let starts_an_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !starts_an_object && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return Err(ApiError::invalid("body", "expected a JSON object"));
    }
    let axum::Json(value) = axum::Json::<T>::from_bytes(bytes)?;
    Ok(value)
}

/// Path parameters.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// A JSON body that may be left out entirely (its defaults apply then).
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(&request);
        let bytes = read_body(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        object(&bytes).map(OptionalJson)
    }
}

/// Reads a form or a JSON body.
pub struct FormOrJson<T>(pub T);

impl<T, S> FromRequest<S> for FormOrJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if is_json(&request) {
            let ApiJson(value) = ApiJson::<T>::from_request(request, state).await?;
            return Ok(FormOrJson(value));
        }
        let axum::Form(value) = axum::Form::<T>::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::BadRequest {
                code: "invalid_form",
                detail: rejection.body_text(),
                field: None,
            })?;
        Ok(FormOrJson(value))
    }
}

/// Whether the request says its body is JSON.
fn is_json(request: &Request) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
