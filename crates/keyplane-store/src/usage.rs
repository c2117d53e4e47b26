//! Usage that nodes report, kept as hourly and daily rollups; which node
//! saw which key; and the budget leases nodes hold.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;

/// The model name that stands for every model past a key's cap in an hour.
pub const OTHER_MODELS: &str = "(other)";

/// One key's use of one model in one minute, as a node counted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The key.
    pub key_id: Uuid,
    /// Its instance.
    pub instance_id: Uuid,
    /// The model ('' when the request named none).
    pub model: String,
    /// The minute it began.
    pub minute: DateTime<Utc>,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Requests that failed.
    pub errors: i64,
}

/// Adds `counted` to the hourly and daily rollups. A key's models past
/// `models_per_bucket` distinct ones in an hour (or a day) are counted as
/// [`OTHER_MODELS`], so no report can grow the rollups without bound.
pub async fn record(
    conn: &mut PgConnection,
    counted: &[Counted],
    models_per_bucket: i64,
) -> Result<(), StoreError> {
    if counted.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(counted.len());
    let mut instances = Vec::with_capacity(counted.len());
    let mut models = Vec::with_capacity(counted.len());
    let mut minutes = Vec::with_capacity(counted.len());
    let mut numbers: [Vec<i64>; 4] = Default::default();
    for row in counted {
        keys.push(row.key_id);
        instances.push(row.instance_id);
        models.push(row.model.as_str());
        minutes.push(row.minute);
        numbers[0].push(row.requests);
        numbers[1].push(row.prompt_tokens);
        numbers[2].push(row.completion_tokens);
        numbers[3].push(row.errors);
    }
    for (table, unit) in [("hourly", "hour"), ("daily", "day")] {
        let sql = match table {
            "hourly" => RECORD_HOURLY,
            _ => RECORD_DAILY,
        };
        sqlx::query(sql)
            .bind(&keys)
            .bind(&instances)
            .bind(&models)
            .bind(&minutes)
            .bind(&numbers[0])
            .bind(&numbers[1])
            .bind(&numbers[2])
            .bind(&numbers[3])
            .bind(unit)
            .bind(models_per_bucket)
            .bind(OTHER_MODELS)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The upsert of [`record`] into `$table`: rows summed per bucket, key and
/// model. Models new to a key's bucket take the places left under the cap
/// (`$10`), in name order; the rest are summed as `$11`.
macro_rules! record_into {
    ($table:literal) => {
        concat!(
            r#"with given as (
                   select k, i, m, date_trunc($9, t, 'UTC') as b,
                          sum(r) as r, sum(p) as p, sum(c) as c, sum(e) as e
                     from unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[],
                                 $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
                          as u(k, i, m, t, r, p, c, e)
                    group by k, i, m, date_trunc($9, t, 'UTC')),
               placed as (
                   select g.*,
                          exists (select 1 from "#,
            $table,
            r#" x where x.bucket_start = g.b and x.key_id = g.k and x.model = g.m) as known,
                          (select count(*) from "#,
            $table,
            r#" x where x.bucket_start = g.b and x.key_id = g.k) as stored
                     from given g),
               named as (
                   select *, known or stored + row_number() over (
                                 partition by b, k, known order by m) <= $10 as fits
                     from placed)
               insert into "#,
            $table,
            r#" as u (bucket_start, key_id, model, instance_id, requests,
                                  prompt_tokens, completion_tokens, errors)
               select b, k, case when fits then m else $11 end, i,
                      sum(r), sum(p), sum(c), sum(e)
                 from named
                group by b, k, case when fits then m else $11 end, i
               on conflict (bucket_start, key_id, model) do update
                  set requests = u.requests + excluded.requests,
                      prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
                      completion_tokens = u.completion_tokens + excluded.completion_tokens,
                      errors = u.errors + excluded.errors"#
        )
    };
}

const RECORD_HOURLY: &str = record_into!("usage_hourly");
const RECORD_DAILY: &str = record_into!("usage_daily");

/// A rollup row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Rollup {
    /// The hour or day it covers (its start).
    pub bucket_start: DateTime<Utc>,
    /// The instance.
    pub instance_id: Uuid,
    /// The key.
    pub key_id: Uuid,
    /// The model.
    pub model: String,
    /// Requests.
    pub requests: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Failed requests.
    pub errors: i64,
}

/// Which rollup rows to read.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Daily rows (true) or hourly ones.
    pub daily: bool,
    /// Only this instance's keys.
    pub instance_id: Option<Uuid>,
    /// Only this key.
    pub key_id: Option<Uuid>,
    /// Only this model.
    pub model: Option<&'a str>,
    /// Buckets starting at or after.
    pub from: DateTime<Utc>,
    /// Buckets starting before.
    pub to: DateTime<Utc>,
    /// At most this many rows.
    pub limit: i64,
}

/// Rollup rows, oldest first.
pub async fn query(db: impl PgExecutor<'_>, q: &Query<'_>) -> Result<Vec<Rollup>, StoreError> {
    let sql = match q.daily {
        true => QUERY_DAILY,
        false => QUERY_HOURLY,
    };
    Ok(sqlx::query_as::<_, Rollup>(sql)
        .bind(q.instance_id)
        .bind(q.key_id)
        .bind(q.model)
        .bind(q.from)
        .bind(q.to)
        .bind(q.limit)
        .fetch_all(db)
        .await?)
}

macro_rules! query_from {
    ($table:literal) => {
        concat!(
            r#"select bucket_start, instance_id, key_id, model, requests, prompt_tokens,
                      completion_tokens, errors
                 from "#,
            $table,
            r#" where ($1::uuid is null or instance_id = $1)
                  and ($2::uuid is null or key_id = $2)
                  and ($3::text is null or model = $3)
                  and bucket_start >= $4 and bucket_start < $5
                order by bucket_start, key_id, model
                limit $6"#
        )
    };
}

const QUERY_HOURLY: &str = query_from!("usage_hourly");
const QUERY_DAILY: &str = query_from!("usage_daily");

/// Tokens (prompt and completion) and requests per instance since `since`,
/// the `top` instances by tokens first.
pub async fn top_instances(
    db: impl PgExecutor<'_>,
    since: DateTime<Utc>,
    top: i64,
) -> Result<Vec<(Uuid, String, i64, i64)>, StoreError> {
    Ok(sqlx::query_as::<_, (Uuid, String, i64, i64)>(
        r#"select u.instance_id, i.name, sum(u.prompt_tokens + u.completion_tokens)::bigint,
                  sum(u.requests)::bigint
             from usage_hourly u join instances i on i.id = u.instance_id
            where u.bucket_start >= $1
            group by u.instance_id, i.name
            order by 3 desc, 1
            limit $2"#,
    )
    .bind(since)
    .bind(top)
    .fetch_all(db)
    .await?)
}

/// Deletes hourly rows older than `hourly_before` and daily rows older
/// than `daily_before`, at most `batch` of each; answers how many went.
pub async fn delete_old(
    db: &sqlx::PgPool,
    hourly_before: DateTime<Utc>,
    daily_before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for (sql, before) in [
        (
            r#"delete from usage_hourly where ctid = any(array(
                   select ctid from usage_hourly where bucket_start < $1 limit $2))"#,
            hourly_before,
        ),
        (
            r#"delete from usage_daily where ctid = any(array(
                   select ctid from usage_daily where bucket_start < $1 limit $2))"#,
            daily_before,
        ),
    ] {
        deleted += sqlx::query(sql)
            .bind(before)
            .bind(batch)
            .execute(db)
            .await?
            .rows_affected();
    }
    Ok(deleted)
}

/// Notes that nodes were answered about keys (pairs of `key_ids[i]` and
/// `node_ids[i]`, at `times[i]`).
pub async fn note_sightings(
    db: impl PgExecutor<'_>,
    key_ids: &[Uuid],
    node_ids: &[Uuid],
    times: &[DateTime<Utc>],
) -> Result<(), StoreError> {
    sqlx::query(
        r#"insert into key_sightings (key_id, node_id, last_seen)
           select k, n, max(t) from unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) as s(k, n, t)
            where exists (select 1 from api_keys where id = k)
              and exists (select 1 from nodes where id = n)
            group by k, n
           on conflict (key_id, node_id) do update
              set last_seen = greatest(key_sightings.last_seen, excluded.last_seen)"#,
    )
    .bind(key_ids)
    .bind(node_ids)
    .bind(times)
    .execute(db)
    .await?;
    Ok(())
}

/// Of `key_ids`, those `node_id` was answered about, with their instances.
pub async fn seen_by(
    db: impl PgExecutor<'_>,
    node_id: Uuid,
    key_ids: &[Uuid],
) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
    Ok(sqlx::query_as::<_, (Uuid, Uuid)>(
        r#"select k.id, k.instance_id from key_sightings s join api_keys k on k.id = s.key_id
            where s.node_id = $1 and s.key_id = any($2)"#,
    )
    .bind(node_id)
    .bind(key_ids)
    .fetch_all(db)
    .await?)
}

/// Adds what `node_id` reports spending to its leases of these keys.
pub async fn spend_leases(
    conn: &mut PgConnection,
    node_id: Uuid,
    key_ids: &[Uuid],
    tokens: &[i64],
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update usage_leases l set spent = l.spent + s.t
             from (select k, sum(t)::bigint as t
                     from unnest($2::uuid[], $3::bigint[]) as u(k, t) group by k) s
            where l.node_id = $1 and l.key_id = s.k"#,
    )
    .bind(node_id)
    .bind(key_ids)
    .bind(tokens)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a key has used, and what other nodes hold of its budgets.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Spending {
    /// Tokens used since the day began.
    pub today: i64,
    /// Tokens used since the month began.
    pub this_month: i64,
    /// Tokens other nodes hold in leases and have not reported spending.
    pub held_elsewhere: i64,
}

/// Locks `key_id`'s leases (so two grants for one key never race) and
/// answers what it spent in the day and month starting at `day` and
/// `month`, and what nodes other than `node_id` hold at `now`.
pub async fn spending(
    conn: &mut PgConnection,
    key_id: Uuid,
    node_id: Uuid,
    day: DateTime<Utc>,
    month: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Spending, StoreError> {
    sqlx::query("select id from api_keys where id = $1 for update")
        .bind(key_id)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_as::<_, Spending>(
        r#"select
             coalesce((select sum(prompt_tokens + completion_tokens) from usage_daily
                        where key_id = $1 and bucket_start >= $3), 0)::bigint as today,
             coalesce((select sum(prompt_tokens + completion_tokens) from usage_daily
                        where key_id = $1 and bucket_start >= $4), 0)::bigint as this_month,
             coalesce((select sum(greatest(granted - spent, 0)) from usage_leases
                        where key_id = $1 and node_id <> $2 and expires_at > $5), 0)::bigint
               as held_elsewhere"#,
    )
    .bind(key_id)
    .bind(node_id)
    .bind(day)
    .bind(month)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// Gives `node_id` a lease of `granted` tokens of `key_id`'s budgets until
/// `expires_at`, replacing the one it held.
pub async fn grant_lease(
    conn: &mut PgConnection,
    key_id: Uuid,
    node_id: Uuid,
    granted: i64,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        r#"insert into usage_leases (key_id, node_id, granted, spent, granted_at, expires_at)
           values ($1, $2, $3, 0, $4, $5)
           on conflict (key_id, node_id) do update
              set granted = excluded.granted, spent = 0, granted_at = excluded.granted_at,
                  expires_at = excluded.expires_at"#,
    )
    .bind(key_id)
    .bind(node_id)
    .bind(granted)
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}
