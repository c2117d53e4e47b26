-- Usage that gates report (requests, prompt and completion tokens, errors,
-- by key, model and minute), kept as hourly and daily rollups. Rows are
-- bounded: keys are only those the reporting node was answered about, models
-- per key and hour are capped (the rest fold into '(other)'), and rows older
-- than the retention settings are deleted by the scheduler.
create table usage_hourly (
    bucket_start timestamptz not null,
    key_id uuid not null,
    model text not null,
    instance_id uuid not null,
    requests bigint not null default 0,
    prompt_tokens bigint not null default 0,
    completion_tokens bigint not null default 0,
    errors bigint not null default 0,
    constraint usage_hourly_pkey primary key (bucket_start, key_id, model)
);
create index usage_hourly_instance_idx on usage_hourly (instance_id, bucket_start);
create index usage_hourly_key_idx on usage_hourly (key_id, bucket_start);

create table usage_daily (like usage_hourly including defaults);
alter table usage_daily add constraint usage_daily_pkey primary key (bucket_start, key_id, model);
create index usage_daily_instance_idx on usage_daily (instance_id, bucket_start);
create index usage_daily_key_idx on usage_daily (key_id, bucket_start);

-- Which node was answered about which key, and when last: a node reports
-- usage only of keys it saw.
create table key_sightings (
    key_id uuid not null references api_keys (id) on delete cascade,
    node_id uuid not null references nodes (id) on delete cascade,
    last_seen timestamptz not null,
    constraint key_sightings_pkey primary key (key_id, node_id)
);

-- Budget leases: the tokens of a key's daily and monthly budgets a node may
-- spend on its own, without asking keyplane per request. What nodes hold
-- and have not reported spending is never granted twice.
create table usage_leases (
    key_id uuid not null references api_keys (id) on delete cascade,
    node_id uuid not null references nodes (id) on delete cascade,
    granted bigint not null,
    spent bigint not null default 0,
    granted_at timestamptz not null,
    expires_at timestamptz not null,
    constraint usage_leases_pkey primary key (key_id, node_id),
    constraint usage_leases_amounts_check check (granted >= 0 and spent >= 0)
);
