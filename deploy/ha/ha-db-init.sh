#!/bin/sh
# Once, in docker-compose.yml's "ha" profile: creates keyplane's role and
# database on the Patroni cluster's primary (through HAProxy), with the
# password of the keyplane_db_password secret. Idempotent.
set -eu
export PGPASSWORD
PGPASSWORD=$(cat /run/secrets/postgres_password)
password=$(cat /run/secrets/keyplane_db_password)
connect="host=haproxy port=5432 user=postgres dbname=postgres sslmode=verify-full sslrootcert=/certs/ca.pem"
for _ in $(seq 1 120); do
  psql "$connect" -Atqc 'select 1' >/dev/null 2>&1 && break
  sleep 1
done
psql "$connect" -v ON_ERROR_STOP=1 -v password="$password" <<'SQL'
select format('create role keyplane login password %L', :'password')
  where not exists (select 1 from pg_roles where rolname = 'keyplane') \gexec
select format('alter role keyplane password %L', :'password') \gexec
select 'create database keyplane owner keyplane'
  where not exists (select 1 from pg_database where datname = 'keyplane') \gexec
SQL
echo "ha-db-init: role and database keyplane ready"
