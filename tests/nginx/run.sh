#!/usr/bin/env bash
# Runs a real nginx with deploy/nginx/keyplane-auth.conf between curl, a real
# keyplane and a stub inference server, and checks what gets through: a good
# key (200, identity forwarded, key stripped), no key and a malformed key
# (401), a key short of the route's scope (403), a revoked key (401), and
# keyplane unreachable (503: fail closed).
#
# Uses the database server named by KEYPLANE_TEST_DATABASE_URL (scripts/test
# sets it) and the built target/debug/keyplane; installs nginx from Debian's
# packages if it is missing. nginx runs from a temporary prefix with its own
# nginx.conf, pid file, logs and temp paths: /etc/nginx and /var/lib/nginx
# are left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${KEYPLANE_TEST_DATABASE_URL:?run through scripts/test, which starts PostgreSQL}"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  log "nginx is missing; installing it from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # nginx-light is the smallest build with auth_request; newer Debian
  # releases fold it into nginx.
  apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null
fi
if ! command -v jq >/dev/null 2>&1; then
  log "jq is missing; installing it from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq jq >/dev/null
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)
keyplane="$root/target/debug/keyplane"
[ -x "$keyplane" ] || { log "$keyplane is missing; build it with cargo build"; exit 1; }

work=$(mktemp -d /tmp/keyplane-nginx.XXXXXX)
chmod 0700 "$work"
server_pid= upstream_pid= nginx_pid= database=
cleanup() {
  local pid
  for pid in "$nginx_pid" "$upstream_pid" "$server_pid"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$database" ]; then
    "${KEYPLANE_PG_BIN:-/usr/bin}/psql" "$KEYPLANE_TEST_DATABASE_URL" -qAt \
      -c "drop database if exists $database with (force)" >/dev/null 2>&1
  fi
  rm -rf "$work"
  return 0
}
trap cleanup EXIT

# Secrets never reach the terminal whole: kpi_… and kpn_… keys print as
# their prefix and last four characters.
mask() { sed -E 's/(kp[aine]_)[0-9A-Za-z]*([0-9A-Za-z]{4})/\1…\2/g'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # URL what log: waits up to 60 s for URL to answer at all
  local deadline=$((SECONDS + 60))
  until curl -s -o /dev/null "$1"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$2 did not come up:"; mask <"$3" >&2; exit 1
    fi
    sleep 0.1
  done
}

# --- keyplane, on a database of its own -------------------------------------

database="keyplane_nginx_$$"
admin_url=$KEYPLANE_TEST_DATABASE_URL
"${KEYPLANE_PG_BIN:-/usr/bin}/psql" "$admin_url" -qAt -c "create database $database" >/dev/null
database_url="${admin_url%/*}/$database"

keyplane_port=$(free_port)
token="nginx-test-bootstrap-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$keyplane_port" \
  KEYPLANE_BOOTSTRAP_TOKEN="$token" KEYPLANE_DATA_DIR="$work/keyplane-data" \
  KEYPLANE_MASTER_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" \
  "$keyplane" serve >"$work/keyplane.log" 2>&1 &
server_pid=$!
keyplane_url="http://127.0.0.1:$keyplane_port"
deadline=$((SECONDS + 60))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$keyplane_url/readyz")" = 200 ]; do
  if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$server_pid" 2>/dev/null; then
    log "keyplane did not become ready:"; mask <"$work/keyplane.log" >&2; exit 1
  fi
  sleep 0.1
done

# Headers holding secrets go to curl from files (-H @file), not its arguments.
printf 'Authorization: Bearer %s\n' "$token" >"$work/admin.h"
api() { # METHOD PATH JSON: the management API; prints the response body
  curl -sS --fail-with-body -X "$1" "$keyplane_url$2" -H @"$work/admin.h" \
    -H 'Content-Type: application/json' -d "$3" \
    || { log "$1 $2 failed"; exit 1; }
}

instance_id=$(api POST /v1/instances \
  '{"name": "nginx-test", "allowed_scopes": ["inference:chat", "models:read"]}' | jq -er .id)
node=$(api POST /v1/nodes '{"name": "nginx-test-node"}')
node_key=$(jq -er .secret <<<"$node")
key=$(api POST "/v1/instances/$instance_id/keys" '{"name": "chat-only", "scopes": ["inference:chat"]}')
key_id=$(jq -er .id <<<"$key")
key_secret=$(jq -er .secret <<<"$key")
unset node key

# --- the stub inference server: answers every request with what it received -

upstream_port=$(free_port)
python3 -c '
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        out = json.dumps({"method": self.command, "path": self.path,
                          "headers": dict(self.headers.items()), "body": body}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
' "$upstream_port" >"$work/upstream.log" 2>&1 &
upstream_pid=$!
wait_for "http://127.0.0.1:$upstream_port/" "the stub upstream" "$work/upstream.log"

# --- nginx, with the example rendered into a prefix of its own -------------

nginx_port=$(free_port)
sed -e "s/\bKEYPLANE_LISTEN\b/127.0.0.1:$nginx_port/" \
    -e "s/\bKEYPLANE_ADDR\b/127.0.0.1:$keyplane_port/" \
    -e "s/\bKEYPLANE_UPSTREAM\b/127.0.0.1:$upstream_port/" \
    "$root/deploy/nginx/keyplane-auth.conf" >"$work/keyplane-auth.conf"
if grep -nE '\bKEYPLANE_(LISTEN|ADDR|UPSTREAM)\b' "$work/keyplane-auth.conf" >&2; then
  log "placeholders left in the rendered configuration"; exit 1
fi
# The node key file, as an operator would make it from the example.
(umask 077; sed -E "s/^set \\\$keyplane_node_key \".*\";/set \$keyplane_node_key \"$node_key\";/" \
  "$root/deploy/nginx/keyplane-node-key.conf.example" >"$work/keyplane-node-key.conf")
grep -q "\"$node_key\"" "$work/keyplane-node-key.conf" || { log "could not render the node key file"; exit 1; }

# A main nginx.conf around it. Workers run as root here only because the
# temporary prefix is root's; real deployments keep nginx's own user.
{
  [ "$(id -u)" = 0 ] && echo 'user root;'
  cat <<CONF
worker_processes 1;
events { worker_connections 64; }
http {
    access_log $work/access.log;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include keyplane-auth.conf;
}
CONF
} >"$work/nginx.conf"
# nginx honours only the last -g, so the test run repeats these settings;
# -e (nginx 1.19.5+) keeps even start-up errors out of /var/log/nginx.
nginx_args=(-p "$work" -c "$work/nginx.conf")
case "$("$nginx" -h 2>&1)" in *'-e filename'*) nginx_args+=(-e "$work/error.log") ;; esac
globals="pid $work/nginx.pid; error_log $work/error.log;"

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; shift; [ $# -gt 0 ] && printf '      %s\n' "$@" | mask; failures=$((failures + 1)); }

if "$nginx" "${nginx_args[@]}" -g "$globals" -t >"$work/nginx-t.log" 2>&1; then
  pass "nginx -t accepts the rendered configuration"
else
  fail "nginx -t accepts the rendered configuration" "$(cat "$work/nginx-t.log")"
  exit 1
fi
"$nginx" "${nginx_args[@]}" -g "$globals daemon off;" >"$work/nginx.out" 2>&1 &
nginx_pid=$!
nginx_url="http://127.0.0.1:$nginx_port"
wait_for "$nginx_url/v1/models" "nginx" "$work/error.log"

# --- the checks ---------------------------------------------------------------

printf 'Authorization: Bearer %s\n' "$key_secret" >"$work/client.h"
printf 'Authorization: Bearer %s\n' 'kpi_this-is-not-a-key' >"$work/malformed.h"
chat='{"model": "test", "messages": [{"role": "user", "content": "hi"}]}'

request() { # NAME METHOD PATH [curl args...]: status in $status, body in $work/NAME.json
  local name=$1 method=$2 path=$3
  shift 3
  # A refused connection is status 000, a failed check rather than an abort.
  status=$(curl -sS -o "$work/$name.json" -w '%{http_code}' -X "$method" "$nginx_url$path" "$@") || true
}
json_error_code() { jq -er '.error | select(.message and .type) | .code' "$1" 2>/dev/null; }

# 1. A good key on a route its scope covers. The client also tries to forge
#    its identity header; nginx must replace it with keyplane's answer.
request allowed POST /v1/chat/completions -H @"$work/client.h" \
  -H 'Content-Type: application/json' -H 'X-Keyplane-Instance: forged' -d "$chat"
seen_instance=$(jq -r '.headers | with_entries(.key |= ascii_downcase) | .["x-keyplane-instance"] // ""' "$work/allowed.json" 2>/dev/null || true)
seen_authorization=$(jq -r '.headers | with_entries(.key |= ascii_downcase) | .authorization // ""' "$work/allowed.json" 2>/dev/null || true)
if [ "$status" = 200 ] && [ "$seen_instance" = "$instance_id" ] && [ -z "$seen_authorization" ] \
    && ! grep -qF "$key_secret" "$work/allowed.json" && ! grep -qF "$node_key" "$work/allowed.json" \
    && [ "$(jq -r .body "$work/allowed.json")" = "$chat" ]; then
  pass "good key, POST /v1/chat/completions: 200; upstream saw X-Keyplane-Instance=$instance_id, the body, and neither key"
else
  fail "good key, POST /v1/chat/completions: want 200, the instance id and no key upstream" \
    "status $status" "upstream saw: $(cat "$work/allowed.json")"
fi

# 2. No key at all.
request nokey POST /v1/chat/completions -H 'Content-Type: application/json' -d "$chat"
if [ "$status" = 401 ] && [ "$(json_error_code "$work/nokey.json")" = invalid_api_key ]; then
  pass "no key: 401 with an OpenAI-shaped JSON error"
else
  fail "no key: want 401 with a JSON error" "status $status" "body: $(cat "$work/nokey.json")"
fi

# 3. Something shaped like a key that is not one.
request malformed POST /v1/chat/completions -H @"$work/malformed.h" \
  -H 'Content-Type: application/json' -d "$chat"
if [ "$status" = 401 ] && [ "$(json_error_code "$work/malformed.json")" = invalid_api_key ]; then
  pass "malformed key: 401 with an OpenAI-shaped JSON error"
else
  fail "malformed key: want 401" "status $status" "body: $(cat "$work/malformed.json")"
fi

# 4. A good key on a route needing a scope it lacks (models:read).
request forbidden GET /v1/models -H @"$work/client.h"
if [ "$status" = 403 ] && [ "$(json_error_code "$work/forbidden.json")" = insufficient_permissions ]; then
  pass "good key without models:read, GET /v1/models: 403 with an OpenAI-shaped JSON error"
else
  fail "good key without models:read, GET /v1/models: want 403" "status $status" "body: $(cat "$work/forbidden.json")"
fi

# 5. The same key, revoked through the management API, stops working.
api POST "/v1/keys/$key_id/revoke" '{}' >/dev/null
deadline=$((SECONDS + 5))
while :; do
  request revoked POST /v1/chat/completions -H @"$work/client.h" \
    -H 'Content-Type: application/json' -d "$chat"
  [ "$status" = 401 ] || [ "$SECONDS" -ge "$deadline" ] && break
  sleep 0.1
done
if [ "$status" = 401 ] && [ "$(json_error_code "$work/revoked.json")" = invalid_api_key ]; then
  pass "revoked key: 401 within 5 s of the revocation"
else
  fail "revoked key: want 401 within 5 s" "status $status" "body: $(cat "$work/revoked.json")"
fi

# 6. With keyplane gone, nginx fails closed: nothing reaches the upstream.
kill "$server_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true
server_pid=
request down POST /v1/chat/completions -H @"$work/client.h" \
  -H 'Content-Type: application/json' -d "$chat"
if [ "$status" = 503 ] && [ "$(json_error_code "$work/down.json")" = service_unavailable ]; then
  pass "keyplane unreachable: 503 with an OpenAI-shaped JSON error"
else
  fail "keyplane unreachable: want 503" "status $status" "body: $(cat "$work/down.json")"
fi

if [ "$failures" -gt 0 ]; then
  log "$failures check(s) failed; nginx's error log:"
  mask <"$work/error.log" >&2
  exit 1
fi
log "all checks passed (nginx $("$nginx" -v 2>&1 | sed 's|.*/||'))"
