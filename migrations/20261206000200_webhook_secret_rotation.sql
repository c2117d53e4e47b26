-- A webhook's signing secret lives no longer than any key
-- (KEYPLANE_MAX_KEY_LIFETIME), is warned of before it expires, and rotates
-- with overlap: while previous_secret_until has not passed, deliveries carry
-- a signature with each secret, so a receiver verifies with either.
-- Endpoints made before this get at least 30 days to rotate.
alter table webhooks
    add column secret_created_at timestamptz,
    add column secret_expires_at timestamptz,
    add column previous_secret_sealed bytea,
    add column previous_secret_until timestamptz,
    add constraint webhooks_previous_secret_check
        check ((previous_secret_sealed is null) = (previous_secret_until is null));
update webhooks
   set secret_created_at = created_at,
       secret_expires_at = greatest(created_at + interval '90 days', now() + interval '30 days');
alter table webhooks
    alter column secret_created_at set not null,
    alter column secret_expires_at set not null;

create or replace view credential_expiries as
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
      from api_keys where revoked_at is null and enabled and rotated_to is null
    union all
    select 'webhook_secret', id, description, 'whsec_…', secret_created_at, secret_expires_at
      from webhooks where deleted_at is null;
