-- One row naming this keyplane deployment. Its id is stable for the life of the
-- database, so it tells a restarted server (or a second replica) that it sees the
-- same data, and later serves as the default issuer identity.
create table deployment (
    id uuid not null default gen_random_uuid(),
    created_at timestamptz not null default now(),
    singleton boolean not null default true,
    constraint deployment_pkey primary key (id),
    constraint deployment_singleton_key unique (singleton),
    constraint deployment_singleton_check check (singleton)
);

insert into deployment default values;
