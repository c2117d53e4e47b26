-- People sign in with the organisation's OpenID provider.
--
-- A sign-in in progress (`sign_ins`) is found by the digest of the PKCE
-- verifier the browser holds in a cookie: the database never holds anything
-- that finishes it. A session (`sessions`) is found by the digest of its
-- `kps_` token, the cookie's value or a terminal's bearer token. A device
-- authorization (`device_grants`, RFC 8628) is found by the digest of its
-- device code, or by its user code, which a person types.

create table sign_ins (
    verifier_digest bytea not null,
    state text not null,
    nonce text not null,
    -- `login`, `step_up`, or `device` (approving device_grant_id).
    purpose text not null,
    return_to text not null,
    device_grant_id uuid,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    constraint sign_ins_pkey primary key (verifier_digest),
    constraint sign_ins_purpose_check check (purpose in ('login', 'step_up', 'device'))
);

create index sign_ins_expiry_idx on sign_ins (expires_at);

create table sessions (
    id uuid not null,
    digest bytea not null,
    masked text not null,
    -- `browser` (a cookie) or `device` (a terminal's bearer token).
    kind text not null,
    subject text not null,
    email text,
    role text not null,
    -- When the person last signed in with MFA (the ID token's auth_time).
    authenticated_at timestamptz not null,
    created_at timestamptz not null,
    last_seen_at timestamptz not null,
    expires_at timestamptz not null,
    revoked_at timestamptz,
    revoked_reason text,
    client_ip text,
    user_agent text,
    constraint sessions_pkey primary key (id),
    constraint sessions_digest_key unique (digest),
    constraint sessions_kind_check check (kind in ('browser', 'device')),
    constraint sessions_role_check check (role in ('admin', 'operator', 'auditor', 'viewer'))
);

create index sessions_page_idx on sessions (created_at, id);
create index sessions_subject_idx on sessions (subject) where revoked_at is null;

create table device_grants (
    id uuid not null,
    device_code_digest bytea not null,
    user_code text not null,
    -- `pending`, `approved` (a person signed in for it), `denied`, `spent`.
    status text not null,
    interval_seconds integer not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    last_polled_at timestamptz,
    subject text,
    email text,
    role text,
    authenticated_at timestamptz,
    session_id uuid,
    client_ip text,
    constraint device_grants_pkey primary key (id),
    constraint device_grants_device_code_key unique (device_code_digest),
    constraint device_grants_user_code_key unique (user_code),
    constraint device_grants_status_check
        check (status in ('pending', 'approved', 'denied', 'spent'))
);

create index device_grants_expiry_idx on device_grants (expires_at);
