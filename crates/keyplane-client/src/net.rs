//! Talking to keyplane over HTTP.

/// What went wrong with a call to keyplane, without the URL reqwest's errors
/// name (ours carry no secret, but logs stay short).
pub(crate) fn without_url(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_decode() {
        "bad body"
    } else {
        "request failed"
    };
    format!("{kind}: {}", err.without_url())
}
