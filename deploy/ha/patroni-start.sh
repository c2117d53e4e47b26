#!/bin/sh
# Starts one Patroni node of docker-compose.yml's "ha" profile: fills in
# deploy/ha/patroni.yml.template for node $NODE (reached by that name), with
# etcd at $ETCD_HOSTS, the superuser's password from the postgres_password
# secret and TLS from the compose CA's "postgres" certificate.
set -eu
: "${NODE:?NODE names this node (pg-1, pg-2)}"
: "${ETCD_HOSTS:?ETCD_HOSTS lists the etcd members (host:port,...)}"
password=$(cat /run/secrets/postgres_password)
config=/tmp/patroni.yml
umask 077
sed -e "s|@NAME@|$NODE|g" -e "s|@LISTEN@|0.0.0.0|g" -e "s|@HOST@|$NODE|g" \
    -e "s|@PG_PORT@|5432|g" -e "s|@API_PORT@|8008|g" -e "s|@ETCD@|$ETCD_HOSTS|g" \
    -e "s|@DATA@|/var/lib/postgresql/data/pgdata|g" -e "s|@PG_BIN@|/usr/lib/postgresql/15/bin|g" \
    -e "s|@WORK@|/var/run/postgresql|g" -e "s|@PASSWORD@|$password|g" \
    -e 's|^  parameters:$|  parameters:\
    ssl: "on"\
    ssl_cert_file: /certs/postgres/cert.pem\
    ssl_key_file: /certs/postgres/key.pem\
    ssl_min_protocol_version: TLSv1.2|' \
    /etc/patroni/patroni.yml.template >"$config"
exec patroni "$config"
