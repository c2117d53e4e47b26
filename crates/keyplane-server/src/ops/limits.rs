//! Usage limits on keys and instances, as the API reads and writes them.

use keyplane_domain::{KeySecret, Limits, Models};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ops::{Refusal, input};

/// Rate limits and token budgets; a limit that is null or absent is no
/// limit. A key is held to the tighter of its own and its instance's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Requests per minute (1 to 10,000,000).
    #[schema(example = 60)]
    pub rpm: Option<i64>,
    /// Tokens per minute, prompt and completion (1 to 10^10).
    pub tpm: Option<i64>,
    /// Tokens per UTC day (1 to 10^13).
    pub daily_tokens: Option<i64>,
    /// Tokens per UTC calendar month (1 to 3·10^14).
    pub monthly_tokens: Option<i64>,
}

impl From<Limits> for LimitsBody {
    fn from(limits: Limits) -> Self {
        let signed = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok());
        LimitsBody {
            rpm: signed(limits.rpm),
            tpm: signed(limits.tpm),
            daily_tokens: signed(limits.daily_tokens),
            monthly_tokens: signed(limits.monthly_tokens),
        }
    }
}

/// The limits in `body` (absent: none), each checked against its bound.
pub fn limits(body: Option<LimitsBody>) -> Result<Limits, Refusal> {
    let body = body.unwrap_or_default();
    Limits::new(body.rpm, body.tpm, body.daily_tokens, body.monthly_tokens)
        .map_err(|err| Refusal::invalid(format!("limits.{}", err.field), err.to_string()))
}

/// A model allow-list from `field` (absent: every model), as stored.
pub fn models(list: Option<&[String]>) -> Result<Option<Vec<String>>, Refusal> {
    let Some(list) = list else {
        return Ok(None);
    };
    input::bounded("models", list)?;
    if let Some(index) = list
        .iter()
        .position(|text| KeySecret::parse(text.trim()).is_ok())
    {
        return Err(Refusal::invalid(
            format!("models[{index}]"),
            "this is a keyplane key; keys never go in model lists",
        ));
    }
    let models = Models::parse(list).map_err(|(index, err)| {
        let field = index.map_or("models".to_owned(), |i| format!("models[{i}]"));
        Refusal::invalid(field, err.to_string())
    })?;
    Ok(Some(models.to_strings()))
}
