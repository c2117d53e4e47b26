-- The registry: roles, instances and their keys, nodes, operators' keys, and
-- the audit log every change is written to in the same transaction.

-- Signs pagination cursors, so a cursor that was edited is refused.
alter table deployment
    add column cursor_secret bytea not null
        default (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

create table roles (
    name text not null,
    description text not null default '',
    scopes text[] not null default '{}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint roles_pkey primary key (name)
);

insert into roles (name, description, scopes) values
    ('inference-client', 'Chat, completions and embeddings; list models',
        '{inference:chat,inference:embeddings,models:read}'),
    ('model-manager', 'List, pull and delete models', '{models:read,models:write}'),
    ('node-admin', 'Run a node: models and configuration',
        '{models:read,models:write,configs:read,configs:admin}');

create table instances (
    id uuid not null,
    name text not null,
    description text not null default '',
    labels jsonb not null default '{}',
    allowed_scopes text[] not null default '{}',
    allowed_cidrs text[] not null default '{}',
    status text not null default 'active',
    created_at timestamptz not null,
    updated_at timestamptz not null,
    decommissioned_at timestamptz,
    constraint instances_pkey primary key (id),
    constraint instances_status_check check (status in ('active', 'suspended', 'decommissioned'))
);

-- A decommissioned instance frees its name.
create unique index instances_name_key on instances (name) where status <> 'decommissioned';
create index instances_page_idx on instances (created_at, id);

create table api_keys (
    id uuid not null,
    instance_id uuid not null,
    name text not null,
    digest bytea not null,
    masked text not null,
    scopes text[] not null default '{}',
    roles text[] not null default '{}',
    audience text[] not null default '{}',
    enabled boolean not null default true,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    revoked_at timestamptz,
    revoked_reason text,
    rotated_from uuid,
    rotated_to uuid,
    grace_until timestamptz,
    last_used_at timestamptz,
    constraint api_keys_pkey primary key (id),
    constraint api_keys_digest_key unique (digest),
    constraint api_keys_instance_fkey foreign key (instance_id) references instances (id),
    constraint api_keys_rotated_from_fkey foreign key (rotated_from) references api_keys (id),
    constraint api_keys_rotated_to_key unique (rotated_to)
);

create index api_keys_page_idx on api_keys (created_at, id);
create index api_keys_instance_idx on api_keys (instance_id, created_at, id);

create table nodes (
    id uuid not null,
    name text not null,
    description text not null default '',
    digest bytea not null,
    masked text not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    retired_at timestamptz,
    last_seen_at timestamptz,
    constraint nodes_pkey primary key (id),
    constraint nodes_digest_key unique (digest)
);

create unique index nodes_name_key on nodes (name) where retired_at is null;
create index nodes_page_idx on nodes (created_at, id);

create table admin_keys (
    id uuid not null,
    name text not null,
    role text not null,
    digest bytea not null,
    masked text not null,
    created_by text not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    revoked_at timestamptz,
    revoked_reason text,
    last_used_at timestamptz,
    constraint admin_keys_pkey primary key (id),
    constraint admin_keys_digest_key unique (digest),
    constraint admin_keys_role_check check (role in ('admin', 'operator', 'auditor', 'viewer'))
);

create index admin_keys_page_idx on admin_keys (created_at, id);

-- Append-only. `seq`, `prev_hash` and `hash` are left for the hash chain that
-- makes the log tamper-evident.
create table audit_log (
    id bigint generated always as identity,
    at timestamptz not null,
    actor text not null,
    action text not null,
    target_type text not null,
    target_id text,
    outcome text not null default 'success',
    request_id text,
    client_ip text,
    details jsonb not null default '{}',
    prev_hash bytea,
    hash bytea,
    constraint audit_log_pkey primary key (id),
    constraint audit_log_outcome_check check (outcome in ('success', 'denied'))
);

create index audit_log_at_idx on audit_log (at, id);

-- The status users see, derived (never stored) from a key's fields at `now`,
-- so it cannot drift and an injected clock decides expiry.
create function api_key_status(k api_keys, now timestamptz) returns text
language sql immutable as $$
    select case
        when k.revoked_at is not null then 'revoked'
        when k.expires_at <= now then 'expired'
        when k.grace_until is not null and k.grace_until <= now then 'expired'
        when not k.enabled then 'disabled'
        when k.rotated_to is not null then 'rotating'
        else 'active'
    end
$$;
