-- Ed25519 keys that sign introspection answers (RFC 9701) and audit
-- checkpoints. The private half is sealed with the master key
-- (KEYPLANE_MASTER_KEY); only the public half is ever served (JWKS).
create table signing_keys (
    kid text not null,
    public_key bytea not null,
    sealed_private_key bytea not null,
    created_at timestamptz not null,
    constraint signing_keys_pkey primary key (kid)
);

create index signing_keys_created_idx on signing_keys (created_at desc);
