-- Signing keys renew on schedule while keyplane runs: the next key is made
-- (and published in the JWKS) a while before it starts signing, at
-- active_from, so nodes that cache the JWKS know it first.
alter table signing_keys add column active_from timestamptz;
update signing_keys set active_from = created_at;
alter table signing_keys alter column active_from set not null;
create index signing_keys_active_idx on signing_keys (active_from desc);
