-- Scopes operators define, beside the built-in catalog (`resource:action`):
-- a scope in neither is refused wherever scopes are granted, so a typo can
-- never be granted.
create table scopes (
    name text not null,
    description text not null default '',
    created_at timestamptz not null,
    constraint scopes_pkey primary key (name),
    constraint scopes_name_check check (name ~ '^[a-z0-9_-]+:[a-z0-9_-]+$' and length(name) <= 64)
);
