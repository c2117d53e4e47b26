use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A position in a list ordered by creation time then id: the next page
/// starts after it. Keyset pagination stays correct while rows are added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    /// The creation time of the last row seen.
    pub created_at: DateTime<Utc>,
    /// The id of the last row seen.
    pub id: Uuid,
}

/// The upper bound on one page.
pub const MAX_PAGE: i64 = 500;

/// Splits a fetched `limit + 1` rows into the page and the position after
/// it, when there is a next page.
pub fn paginate<T>(
    mut rows: Vec<T>,
    limit: i64,
    position: impl Fn(&T) -> After,
) -> (Vec<T>, Option<After>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(position);
        (rows, next)
    } else {
        (rows, None)
    }
}
