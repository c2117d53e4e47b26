-- Node keys rotate with overlap. A node keeps its id (so every key whose
-- audience names it keeps working); after a rotation its previous key works
-- until previous_until. key_created_at says when the current key was made
-- (so when its rotation is due); key_used_at, whether the node has used it:
-- a node that lost the answer to its own rotation may ask again with its
-- previous key only while the new one is unused, and only for minutes.
alter table nodes
    add column key_created_at timestamptz,
    add column key_used_at timestamptz,
    add column rotated_at timestamptz,
    add column rotated_by text
        constraint nodes_rotated_by_check check (rotated_by in ('holder', 'operator')),
    add column previous_digest bytea,
    add column previous_masked text,
    add column previous_until timestamptz,
    add constraint nodes_previous_digest_key unique (previous_digest),
    add constraint nodes_previous_check
        check ((previous_digest is null) = (previous_until is null)
           and (previous_digest is null) = (previous_masked is null));
update nodes set key_created_at = created_at;
alter table nodes alter column key_created_at set not null;

-- Admin keys rotate the way instance keys do: a successor row, and the old
-- key working until grace_until.
alter table admin_keys
    add column grace_until timestamptz,
    add column rotated_from uuid
        constraint admin_keys_rotated_from_fkey references admin_keys (id),
    add column rotated_to uuid
        constraint admin_keys_rotated_to_fkey references admin_keys (id),
    add column rotated_at timestamptz,
    add column rotated_by text
        constraint admin_keys_rotated_by_check check (rotated_by in ('holder', 'operator'));

-- Every credential that can expire, as one list: what the scheduler warns
-- about (14, 7 and 1 days ahead), /metrics' nearest expiries and /healthz's
-- warnings. A credential with a successor is not listed: a node's key is
-- replaced in place, an admin or instance key once rotated is done.
create view credential_expiries as
    select 'node_key'::text as kind, id, name, masked, key_created_at as created_at, expires_at
      from nodes where retired_at is null
    union all
    select 'admin_key', id, name, masked, created_at, expires_at
      from admin_keys where revoked_at is null and rotated_to is null
    union all
    select 'enrollment_token', id, name, masked, created_at, expires_at
      from enrollment_tokens where revoked_at is null and uses_left > 0
    union all
    select 'api_key', id, name, masked, created_at, expires_at
      from api_keys where revoked_at is null and enabled and rotated_to is null;

-- The scheduler's warnings about them, each at most once. A credential is
-- named with its expiry: a node's new key is a new credential to warn about.
create table credential_notices (
    kind text not null,
    id uuid not null,
    expires_at timestamptz not null,
    notice text not null,
    at timestamptz not null,
    constraint credential_notices_pkey primary key (kind, id, expires_at, notice)
);
