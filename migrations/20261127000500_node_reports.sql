-- What each node last said about itself in its heartbeat: the mode it runs
-- in, its version and the routes it serves without a key. Operators see it in
-- GET /v1/nodes, with nodes weaker than keyplane's own mode flagged.
alter table nodes
    add column reported_mode text check (reported_mode in ('dev', 'mixed', 'prod')),
    add column reported_version text check (length(reported_version) <= 64),
    add column reported_public_routes text[] not null default '{}',
    add column reported_at timestamptz;
