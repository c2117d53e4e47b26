//! Opaque, signed pagination cursors: a cursor that was edited, or made for
//! another list, is refused rather than silently misread.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use hmac::{Hmac, KeyInit, Mac};
use keyplane_store::{After, MAX_PAGE};
use serde::Deserialize;
use sha2::Sha256;
use uuid::Uuid;

use crate::refusal::Refusal;

/// The key cursors are signed with (shared by every replica through the database).
pub struct CursorKey(Vec<u8>);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

const TAG_LEN: usize = 16;

fn bad_cursor() -> Refusal {
    Refusal::Unreadable {
        code: "invalid_cursor",
        detail: "the cursor is not one this list handed out".to_owned(),
        field: "cursor",
    }
}
const DEFAULT_PAGE: i64 = 50;

impl CursorKey {
    /// Wraps the secret read from the database.
    pub fn new(secret: Vec<u8>) -> CursorKey {
        CursorKey(secret)
    }

    fn tag(&self, list: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(list.as_bytes());
        mac.update(payload);
        Some(mac.finalize().into_bytes()[..TAG_LEN].to_vec())
    }

    /// A cursor carrying `payload` for the list named `list`.
    fn seal(&self, list: &str, mut payload: Vec<u8>) -> String {
        let tag = self.tag(list, &payload).unwrap_or_default();
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// The payload of a cursor [`CursorKey::seal`] made for `list`: `len`
    /// bytes, or any length for `None`.
    fn open(&self, list: &str, cursor: &str, len: Option<usize>) -> Result<Vec<u8>, Refusal> {
        let bad = bad_cursor;
        if cursor.len() > 128 {
            return Err(bad());
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
        let len = len.unwrap_or(bytes.len().saturating_sub(TAG_LEN));
        if bytes.len() != len + TAG_LEN {
            return Err(bad());
        }
        let tag = bytes.split_off(len);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).map_err(|_| bad())?;
        mac.update(list.as_bytes());
        mac.update(&bytes);
        mac.verify_truncated_left(&tag).map_err(|_| bad())?;
        Ok(bytes)
    }

    /// The cursor for the page after `after` in the list named `list`.
    pub fn encode(&self, list: &str, after: After) -> String {
        let mut payload = after.created_at.timestamp_micros().to_be_bytes().to_vec();
        payload.extend_from_slice(after.id.as_bytes());
        self.seal(list, payload)
    }

    /// Reads a cursor made by [`CursorKey::encode`] for the same list.
    pub fn decode(&self, list: &str, cursor: &str) -> Result<After, Refusal> {
        let payload = self.open(list, cursor, Some(8 + 16))?;
        let (micros, id) = payload.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().unwrap_or_default());
        let created_at = DateTime::from_timestamp_micros(micros).unwrap_or_default();
        let id = Uuid::from_slice(id).unwrap_or_default();
        Ok(After { created_at, id })
    }

    /// The cursor for the page after position `seq` of an ordered log.
    pub fn encode_seq(&self, list: &str, seq: i64) -> String {
        self.seal(list, seq.to_be_bytes().to_vec())
    }

    /// Reads a cursor made by [`CursorKey::encode_seq`] for the same list.
    pub fn decode_seq(&self, list: &str, cursor: &str) -> Result<i64, Refusal> {
        let payload = self.open(list, cursor, Some(8))?;
        Ok(i64::from_be_bytes(payload.try_into().unwrap_or_default()))
    }

    /// The cursor for the page after the item named `name` of a list
    /// ordered by name.
    pub fn encode_name(&self, list: &str, name: &str) -> String {
        self.seal(list, name.as_bytes().to_vec())
    }

    /// Reads a cursor made by [`CursorKey::encode_name`] for the same list.
    pub fn decode_name(&self, list: &str, cursor: &str) -> Result<String, Refusal> {
        let payload = self.open(list, cursor, None)?;
        String::from_utf8(payload).map_err(|_| bad_cursor())
    }
}

/// `limit` and `cursor`, shared by every list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// How many items to return, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The validated limit and the position to start after.
    pub fn resolve(&self, key: &CursorKey, list: &str) -> Result<(i64, Option<After>), Refusal> {
        let limit = self.limit()?;
        let after = self
            .cursor
            .as_deref()
            .map(|c| key.decode(list, c))
            .transpose()?;
        Ok((limit, after))
    }

    /// The validated limit.
    pub fn limit(&self) -> Result<i64, Refusal> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Refusal::Unreadable {
                code: "invalid_query",
                detail: format!("limit must be between 1 and {MAX_PAGE}"),
                field: "limit",
            });
        }
        Ok(limit)
    }
}

/// Declares a named page type for a list, so generated clients get
/// `InstancePage { items: Vec<InstanceResponse>, .. }` rather than an inlined
/// anonymous item type.
macro_rules! page_type {
    ($page:ident, $item:ty) => {
        #[doc = concat!("One page of ", stringify!($item), " items.")]
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        pub struct $page {
            /// The items of this page.
            pub items: Vec<$item>,
            /// Pass as `cursor` to get the next page; null on the last page.
            pub next_cursor: Option<String>,
        }
    };
}
pub(crate) use page_type;
