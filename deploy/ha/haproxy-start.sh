#!/bin/sh
# Starts HAProxy for docker-compose.yml's "ha" profile: fills in
# deploy/ha/haproxy.cfg.template with the compose services' names. The
# database's primary is on 5432, a standby on 5433, keyplane (HTTPS, passed
# through) on 8443; the keyplane checks go over TLS, trusting the compose CA.
set -eu
sed -e "s|@BIND@|0.0.0.0|g" -e "s|@PRIMARY_PORT@|5432|g" -e "s|@STANDBY_PORT@|5433|g" \
    -e "s|@PG1@|pg-1:5432|g" -e "s|@PG2@|pg-2:5432|g" -e "s|@API1_PORT@|8008|g" -e "s|@API2_PORT@|8008|g" \
    -e "s|@KEYPLANE_PORT@|8443|g" -e "s|@KP1@|keyplane-1:8080|g" -e "s|@KP2@|keyplane-2:8080|g" \
    -e "s|@KP3@|keyplane-3:8080|g" \
    -e "s|@KEYPLANE_CHECK@|check-ssl verify required ca-file /certs/ca.pem|g" \
    /deploy/haproxy.cfg.template >/tmp/haproxy.cfg
exec haproxy -W -db -f /tmp/haproxy.cfg
