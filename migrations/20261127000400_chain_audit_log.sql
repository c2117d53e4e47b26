-- The audit log becomes a hash chain: `seq` orders it without gaps, and each
-- entry's `hash` covers its fields and the previous entry's hash. Entries
-- written before this migration are chained by the server at its next start.
alter table audit_log add column seq bigint;
alter table audit_log add constraint audit_log_seq_key unique (seq);

-- Signed statements of the chain's head, so an operator holding one can show
-- that nothing before it was rewritten later.
create table audit_checkpoints (
    seq bigint not null,
    head_hash bytea not null,
    at timestamptz not null,
    signature text not null,
    constraint audit_checkpoints_pkey primary key (seq)
);
