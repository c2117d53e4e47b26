//! `/v1/leaks`: anyone may report a leaked key.

use axum::Json;
use axum::http::StatusCode;

use crate::error::{ApiError, Problem};
use crate::extract::SignedJson;
use crate::ops::Ops;
use crate::ops::leaks::{LeakReportAnswer, LeakReports, Reporter};

/// Report leaked keys: one finding `{"token", "url", "source"}` or a list
/// of up to 100 (GitHub's secret scanning partner format, its signature
/// verified when `KEYPLANE_LEAK_REPORT_KEYS` is set). Every working key
/// among them is stopped at once, audited with where it was found and
/// announced (`key.leaked`). The answer is the same whatever the report
/// held, so it never says whether a key existed. Unsigned reports are
/// rate-limited per address.
#[utoipa::path(
    post, path = "/v1/leaks", operation_id = "report_leaks", tag = "leaks",
    request_body = LeakReports,
    params(
        ("Github-Public-Key-Identifier" = Option<String>, Header, description = "The key that signed the report"),
        ("Github-Public-Key-Signature" = Option<String>, Header, description = "Base64 DER ECDSA P-256 SHA-256 signature of the body"),
    ),
    responses(
        (status = 202, description = "Received", body = LeakReportAnswer),
        (status = "4XX", description = "Refused: malformed, too many findings, a bad signature, or too many reports", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn report_leaks(
    ops: Ops<Reporter>,
    SignedJson(report, body): SignedJson<LeakReports>,
) -> Result<(StatusCode, Json<LeakReportAnswer>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(ops.report_leaks(report, &body).await?),
    ))
}
