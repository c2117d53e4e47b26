-- Legacy keys: static keys from before keyplane (Cortex's `apiKeys`),
-- imported with `keyplanectl import cortex`. They are hashed like every key
-- and found by the same digest index; the flag says they carry no checksum,
-- are accepted only where KEYPLANE_ACCEPT_LEGACY_KEYS is on, and that a
-- rotation replaces them with a `kpi_` key.
alter table api_keys add column legacy boolean not null default false;
