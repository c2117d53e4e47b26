-- Every key that stopped working (revoked, disabled, rotated out, or its
-- instance suspended or decommissioned), in order, so a node that reconnects
-- to the revocation stream with Last-Event-ID gets exactly what it missed.
create table revocations (
    id bigint generated always as identity,
    key_id uuid not null,
    reason text not null,
    at timestamptz not null,
    constraint revocations_pkey primary key (id),
    constraint revocations_reason_check
        check (reason in ('revoked', 'disabled', 'rotated', 'suspended', 'decommissioned'))
);

create index revocations_at_idx on revocations (at);
