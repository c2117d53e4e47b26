//! What introspection needs to know about a key or a node, in one query each.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::StoreError;

/// Everything that decides whether a key is good, read by its digest.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyFacts {
    /// The key's id.
    pub key_id: Uuid,
    /// Its instance.
    pub instance_id: Uuid,
    /// Its instance's name.
    pub instance_name: String,
    /// `active`, `suspended` or `decommissioned`.
    pub instance_status: String,
    /// The instance's ceiling.
    pub allowed_scopes: Vec<String>,
    /// The instance's networks.
    pub allowed_cidrs: Vec<String>,
    /// The key's own scopes.
    pub scopes: Vec<String>,
    /// The scopes of the key's roles.
    pub role_scopes: Vec<String>,
    /// Node ids that may accept it.
    pub audience: Vec<String>,
    /// False while disabled.
    pub enabled: bool,
    /// True once revoked.
    pub revoked: bool,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// After a rotation, when it stops.
    pub grace_until: Option<DateTime<Utc>>,
    /// The key's own limits.
    pub key_limits: sqlx::types::Json<keyplane_domain::Limits>,
    /// The key's own model allow-list.
    pub key_models: Option<Vec<String>>,
    /// Its instance's limits.
    pub instance_limits: sqlx::types::Json<keyplane_domain::Limits>,
    /// Its instance's model allow-list.
    pub instance_models: Option<Vec<String>>,
}

/// The query of [`KeyFacts`] for keys `k` (joined to their instances `i`)
/// that match `$where`.
macro_rules! key_facts_where {
    ($where:literal) => {
        concat!(
            r#"select k.id as key_id, k.instance_id, i.name as instance_name,
                      i.status as instance_status, i.allowed_scopes, i.allowed_cidrs, k.scopes,
                      coalesce((select array_agg(distinct s) from roles r, unnest(r.scopes) s
                                 where r.name = any(k.roles)), '{}') as role_scopes,
                      k.audience, k.enabled, k.revoked_at is not null as revoked,
                      k.created_at, k.expires_at, k.grace_until,
                      k.limits as key_limits, k.models as key_models,
                      i.limits as instance_limits, i.models as instance_models
                 from api_keys k
                 join instances i on i.id = k.instance_id
                where "#,
            $where
        )
    };
}

/// The facts about the key with this digest.
pub async fn key_facts(
    db: impl PgExecutor<'_>,
    digest: &[u8],
) -> Result<Option<KeyFacts>, StoreError> {
    Ok(
        sqlx::query_as::<_, KeyFacts>(key_facts_where!("k.digest = $1"))
            .bind(digest)
            .fetch_optional(db)
            .await?,
    )
}

/// Which keys' facts to read.
#[derive(Debug, Clone, Copy)]
pub enum KeysOf<'a> {
    /// These keys, whatever their state.
    Ids(&'a [Uuid]),
    /// The unrevoked, unexpired keys of this instance.
    Instance(Uuid),
    /// The unrevoked, unexpired keys that carry this role.
    Role(&'a str),
}

/// The facts about the keys `which` names, as of `now`.
pub async fn key_facts_of(
    db: impl PgExecutor<'_>,
    which: KeysOf<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<KeyFacts>, StoreError> {
    let query = match which {
        KeysOf::Ids(ids) => sqlx::query_as::<_, KeyFacts>(key_facts_where!(
            "k.id = any($1) and $2::timestamptz is not null"
        ))
        .bind(ids),
        KeysOf::Instance(id) => sqlx::query_as::<_, KeyFacts>(key_facts_where!(
            "k.instance_id = $1 and k.revoked_at is null and k.expires_at > $2"
        ))
        .bind(id),
        KeysOf::Role(name) => sqlx::query_as::<_, KeyFacts>(key_facts_where!(
            "$1 = any(k.roles) and k.revoked_at is null and k.expires_at > $2"
        ))
        .bind(name),
    };
    Ok(query.bind(now).fetch_all(db).await?)
}

/// Everything that decides whether a node key is good.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeFacts {
    /// The node's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// When its key expires.
    pub expires_at: DateTime<Utc>,
    /// True once retired.
    pub retired: bool,
    /// The proxy that calls forward auth for it; None: the deployment's default.
    pub forward_auth_proxy: Option<String>,
    /// Until when a client certificate naming it by DNS name stays valid,
    /// of those that authenticated it.
    pub certificate_valid_until: Option<DateTime<Utc>>,
    /// Whether the key is the node's current one (not the previous one,
    /// still working for its grace window). True for a certificate.
    pub current_key: bool,
    /// Whether the node has used its current key yet.
    pub key_used: bool,
}

/// The facts about the node whose key (current, or previous within its
/// grace window: `expires_at` is then the window's end) has this digest.
pub async fn node_facts(
    db: impl PgExecutor<'_>,
    digest: &[u8],
) -> Result<Option<NodeFacts>, StoreError> {
    Ok(sqlx::query_as::<_, NodeFacts>(
        r#"select id, name,
                  case when digest = $1 then expires_at else previous_until end as expires_at,
                  retired_at is not null as retired, forward_auth_proxy, certificate_valid_until,
                  digest = $1 as current_key, key_used_at is not null as key_used
             from nodes where digest = $1 or previous_digest = $1"#,
    )
    .bind(digest)
    .fetch_optional(db)
    .await?)
}

/// The facts about the one live node named by any of `names` (the DNS names
/// of a client certificate); none when no live node, or more than one, is.
pub async fn node_facts_by_names(
    db: impl PgExecutor<'_>,
    names: &[String],
) -> Result<Option<NodeFacts>, StoreError> {
    let mut found = sqlx::query_as::<_, NodeFacts>(
        r#"select id, name, expires_at, false as retired, forward_auth_proxy, certificate_valid_until,
                  true as current_key, true as key_used
             from nodes where retired_at is null and lower(name) = any($1) limit 2"#,
    )
    .bind(names)
    .fetch_all(db)
    .await?;
    Ok(if found.len() == 1 { found.pop() } else { None })
}

/// The facts about the live node with this id.
pub async fn node_facts_by_id(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<NodeFacts>, StoreError> {
    Ok(sqlx::query_as::<_, NodeFacts>(
        r#"select id, name, expires_at, false as retired, forward_auth_proxy, certificate_valid_until,
                  true as current_key, true as key_used
             from nodes where retired_at is null and id = $1"#,
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Records when keys were last accepted, keeping the newest time.
pub async fn touch_keys(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    times: &[DateTime<Utc>],
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update api_keys k set last_used_at = u.at
             from unnest($1::uuid[], $2::timestamptz[]) as u(id, at)
            where k.id = u.id and (k.last_used_at is null or k.last_used_at < u.at)"#,
    )
    .bind(ids)
    .bind(times)
    .execute(db)
    .await?;
    Ok(())
}

/// Records when nodes were last seen, keeping the newest time.
pub async fn touch_nodes(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    times: &[DateTime<Utc>],
) -> Result<(), StoreError> {
    sqlx::query(
        r#"update nodes n set last_seen_at = u.at
             from unnest($1::uuid[], $2::timestamptz[]) as u(id, at)
            where n.id = u.id and (n.last_seen_at is null or n.last_seen_at < u.at)"#,
    )
    .bind(ids)
    .bind(times)
    .execute(db)
    .await?;
    Ok(())
}
