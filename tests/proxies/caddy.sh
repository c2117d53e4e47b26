#!/usr/bin/env bash
# Runs a real Caddy with deploy/caddy/Caddyfile between curl, a real keyplane
# (its forward-auth convention set to caddy) and a stub inference server, and
# checks what gets through (see `proxy_checks` in lib.sh). Caddy copies every
# client header into the forward-auth call, so the forged X-Original-URI and
# X-Real-IP of the checks do reach keyplane here, which must refuse them.
# With keyplane gone, Caddy fails closed (502).
#
# Installs caddy from Debian's packages if it is missing; runs it with its
# own configuration and no admin endpoint, as root only because the test runs
# as root.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

need caddy caddy
caddy=$(command -v caddy)

start_keyplane caddy
make_fixtures
start_upstream

caddy_port=$(free_port)
sed -e "s|\bKEYPLANE_SITE\b|http://127.0.0.1:$caddy_port|" \
    -e "s|\bKEYPLANE_ADDR\b|127.0.0.1:$keyplane_port|" \
    -e "s|\bKEYPLANE_UPSTREAM\b|127.0.0.1:$upstream_port|" \
    "$root/deploy/caddy/Caddyfile" >"$work/Caddyfile"
if grep -nE '^[^#]*\bKEYPLANE_(SITE|ADDR|UPSTREAM)\b' "$work/Caddyfile" >&2; then
  log "placeholders left in the rendered configuration"; exit 1
fi
if "$caddy" validate --config "$work/Caddyfile" --adapter caddyfile >"$work/validate.log" 2>&1; then
  pass "caddy validate accepts the rendered configuration"
else
  fail "caddy validate accepts the rendered configuration" "$(cat "$work/validate.log")"
  exit 1
fi
# The node key reaches Caddy in its environment only.
KEYPLANE_NODE_KEY="$node_key" HOME="$work" XDG_DATA_HOME="$work/data" XDG_CONFIG_HOME="$work/config" \
  "$caddy" run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
pids+=($!)
proxy_url="http://127.0.0.1:$caddy_port"
wait_for "$proxy_url/v1/models" "caddy" "$work/caddy.log"

proxy_checks
check_fails_closed 502

finish "caddy $("$caddy" version | awk '{print $1}')" "$work/caddy.log"
