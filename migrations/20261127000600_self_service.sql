-- Instance self-service: enrollment tokens, rotation policies, the scheduler's
-- bookkeeping, and webhooks with a table-backed delivery queue.

-- A key may say how often it should be rotated; GET /v1/self answers when.
alter table api_keys
    add column rotate_after_seconds bigint check (rotate_after_seconds > 0);

create table enrollment_tokens (
    id uuid not null,
    name text not null,
    digest bytea not null,
    masked text not null,
    scopes text[] not null default '{}',
    roles text[] not null default '{}',
    labels jsonb not null default '{}',
    allowed_scopes text[] not null default '{}',
    key_lifetime_seconds bigint not null check (key_lifetime_seconds > 0),
    rotate_after_seconds bigint check (rotate_after_seconds > 0),
    uses_total integer not null check (uses_total > 0),
    uses_left integer not null check (uses_left >= 0 and uses_left <= uses_total),
    created_by text not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    revoked_at timestamptz,
    constraint enrollment_tokens_pkey primary key (id),
    constraint enrollment_tokens_digest_key unique (digest)
);

create index enrollment_tokens_page_idx on enrollment_tokens (created_at, id);

-- What the scheduler has done for a key (an expiry warning at 14, 7 or 1
-- days, the announcement of its end), each at most once whoever runs it.
create table key_notices (
    key_id uuid not null,
    notice text not null,
    at timestamptz not null,
    constraint key_notices_pkey primary key (key_id, notice),
    constraint key_notices_key_fkey foreign key (key_id) references api_keys (id)
);

create table webhooks (
    id uuid not null,
    url text not null,
    events text[] not null,
    description text not null default '',
    -- The signing secret, sealed with the master key.
    secret_sealed bytea not null,
    enabled boolean not null default true,
    created_at timestamptz not null,
    deleted_at timestamptz,
    constraint webhooks_pkey primary key (id)
);

create table webhook_deliveries (
    id uuid not null,
    webhook_id uuid not null,
    event text not null,
    payload jsonb not null,
    status text not null default 'pending',
    attempts integer not null default 0,
    next_attempt_at timestamptz not null,
    last_status integer,
    last_error text,
    created_at timestamptz not null,
    delivered_at timestamptz,
    constraint webhook_deliveries_pkey primary key (id),
    constraint webhook_deliveries_webhook_fkey foreign key (webhook_id) references webhooks (id),
    constraint webhook_deliveries_status_check check (status in ('pending', 'delivered', 'failed'))
);

create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_deliveries_webhook_idx on webhook_deliveries (webhook_id, created_at desc);

-- Keys that stop by themselves (expiry, the end of a grace window) are
-- announced on the revocation stream too.
alter table revocations drop constraint revocations_reason_check;
alter table revocations add constraint revocations_reason_check
    check (reason in ('revoked', 'disabled', 'rotated', 'suspended', 'decommissioned', 'expired'));
