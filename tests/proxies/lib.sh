# Sourced by tests/proxies/*.sh: a real keyplane on a database of its own,
# a stub inference server that echoes what reached it, the fixtures every
# proxy test checks with, and the checks themselves. Each proxy's script
# renders its example from deploy/, starts the proxy in front of the stub and
# calls `proxy_checks` (then its own checks).
#
# Uses the database server named by KEYPLANE_TEST_DATABASE_URL (scripts/test
# sets it) and the built target/debug/keyplane. Secrets never reach the
# terminal whole: keys print as their prefix and last four characters.

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${KEYPLANE_TEST_DATABASE_URL:?run through scripts/test, which starts PostgreSQL}"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
mask() { sed -E 's/(kp[aines]_)[0-9A-Za-z]*([0-9A-Za-z]{4})/\1…\2/g'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Installs Debian packages the first time they are needed.
need() { # COMMAND PACKAGE...
  command -v "$1" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$1" ] && return 0
  local command=$1
  shift
  log "$command is missing; installing it from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  local package
  for package in "$@"; do
    apt-get install -y -qq "$package" >/dev/null 2>&1 && return 0
  done
  log "could not install $command"
  return 1
}
need jq jq
need curl curl

keyplane="$root/target/debug/keyplane"
[ -x "$keyplane" ] || { log "$keyplane is missing; build it with cargo build"; exit 1; }

work=$(mktemp -d /tmp/keyplane-proxy.XXXXXX)
chmod 0700 "$work"
pids=() database= server_pid=
cleanup() {
  local pid
  for pid in "${pids[@]}" $server_pid; do
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

wait_for() { # URL WHAT LOG: waits up to 60 s for URL to answer at all
  local deadline=$((SECONDS + 60))
  until curl -s -o /dev/null "$1"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$2 did not come up:"; mask <"$3" >&2; exit 1
    fi
    sleep 0.1
  done
}

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; shift; [ $# -gt 0 ] && printf '      %s\n' "$@" | mask; failures=$((failures + 1)); }

# --- keyplane, on a database of its own ------------------------------------

# Starts keyplane with the forward-auth proxy convention $1 and the public
# route GET /health; sets keyplane_url, keyplane_port and work/admin.h.
start_keyplane() { # PROXY
  database="keyplane_proxy_$$"
  "${KEYPLANE_PG_BIN:-/usr/bin}/psql" "$KEYPLANE_TEST_DATABASE_URL" -qAt -c "create database $database" >/dev/null
  local database_url="${KEYPLANE_TEST_DATABASE_URL%/*}/$database"
  keyplane_port=$(free_port)
  local token="proxy-test-bootstrap-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$keyplane_port" \
    KEYPLANE_BOOTSTRAP_TOKEN="$token" KEYPLANE_DATA_DIR="$work/keyplane-data" \
    KEYPLANE_MASTER_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" \
    KEYPLANE_FORWARD_AUTH_PROXY="$1" KEYPLANE_ROUTE_SCOPES='GET /health=public' \
    "$keyplane" serve >"$work/keyplane.log" 2>&1 &
  server_pid=$!
  keyplane_url="http://127.0.0.1:$keyplane_port"
  local deadline=$((SECONDS + 60))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$keyplane_url/readyz")" = 200 ]; do
    if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$server_pid" 2>/dev/null; then
      log "keyplane did not become ready:"; mask <"$work/keyplane.log" >&2; exit 1
    fi
    sleep 0.1
  done
  # Headers holding secrets go to curl from files (-H @file), not its arguments.
  printf 'Authorization: Bearer %s\n' "$token" >"$work/admin.h"
}

stop_keyplane() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

api() { # METHOD PATH JSON: the management API; prints the response body
  curl -sS --fail-with-body -X "$1" "$keyplane_url$2" -H @"$work/admin.h" \
    -H 'Content-Type: application/json' -d "$3" \
    || { log "$1 $2 failed"; exit 1; }
}

# The fixtures: a node (node_key), a chat-only key of an instance usable
# from anywhere (key_secret, key_id, instance_id), and a chat key of an
# instance fenced to 10.0.0.0/8 (fenced_secret).
make_fixtures() {
  instance_id=$(api POST /v1/instances \
    '{"name": "proxy-test", "allowed_scopes": ["inference:chat", "models:read"]}' | jq -er .id)
  local node key fenced fenced_key
  node=$(api POST /v1/nodes '{"name": "proxy-test-node"}')
  node_key=$(jq -er .secret <<<"$node")
  key=$(api POST "/v1/instances/$instance_id/keys" '{"name": "chat-only", "scopes": ["inference:chat"]}')
  key_id=$(jq -er .id <<<"$key")
  key_secret=$(jq -er .secret <<<"$key")
  fenced=$(api POST /v1/instances \
    '{"name": "proxy-test-office", "allowed_scopes": ["inference:chat"], "allowed_cidrs": ["10.0.0.0/8"]}' | jq -er .id)
  fenced_key=$(api POST "/v1/instances/$fenced/keys" '{"name": "office", "scopes": ["inference:chat"]}')
  fenced_secret=$(jq -er .secret <<<"$fenced_key")
  printf 'Authorization: Bearer %s\n' "$key_secret" >"$work/client.h"
  printf 'Authorization: Bearer %s\n' "$fenced_secret" >"$work/fenced.h"
  printf 'Authorization: Bearer %s\n' 'kpi_this-is-not-a-key' >"$work/malformed.h"
}

# --- the stub inference server: answers every request with what it received -

start_upstream() {
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
    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
' "$upstream_port" >"$work/upstream.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$upstream_port/" "the stub upstream" "$work/upstream.log"
}

# --- the checks every proxy must pass -----------------------------------------

chat='{"model": "test", "messages": [{"role": "user", "content": "hi"}]}'

request() { # NAME METHOD PATH [curl args...]: status in $status, body in $work/NAME.json
  local name=$1 method=$2 path=$3
  shift 3
  # curl leaves the file alone when an answer has no body.
  rm -f "$work/$name.json"
  # A refused connection is status 000, a failed check rather than an abort.
  status=$(curl -sS --path-as-is -o "$work/$name.json" -w '%{http_code}' -X "$method" "$proxy_url$path" "$@") || true
}
upstream_saw() { # NAME HEADER: the header as the upstream received it ("" if absent)
  jq -r --arg h "$2" '.headers | with_entries(.key |= ascii_downcase) | .[$h] // ""' "$work/$1.json" 2>/dev/null || true
}
reached_upstream() { [ -s "$work/$1.json" ] && jq -e '.path' "$work/$1.json" >/dev/null 2>&1; }

# Checks that hold behind any proxy; $proxy_url must answer by now.
proxy_checks() {
  # 1. A good key on a route its scope covers. The client also tries to
  #    forge its identity header; the proxy must replace it with keyplane's.
  request allowed POST /v1/chat/completions -H @"$work/client.h" \
    -H 'Content-Type: application/json' -H 'X-Keyplane-Instance: forged' -d "$chat"
  if [ "$status" = 200 ] && [ "$(upstream_saw allowed x-keyplane-instance)" = "$instance_id" ] \
      && [ -z "$(upstream_saw allowed authorization)" ] \
      && ! grep -qF "$key_secret" "$work/allowed.json" && ! grep -qF "$node_key" "$work/allowed.json" \
      && [ "$(jq -r .body "$work/allowed.json")" = "$chat" ]; then
    pass "good key, POST /v1/chat/completions: 200; upstream saw the instance id, the body, and neither key"
  else
    fail "good key, POST /v1/chat/completions: want 200, the instance id and no key upstream" \
      "status $status" "upstream saw: $(cat "$work/allowed.json")"
  fi

  # 2. No key, and something shaped like a key that is not one.
  request nokey POST /v1/chat/completions -H 'Content-Type: application/json' -d "$chat"
  [ "$status" = 401 ] && pass "no key: 401" || fail "no key: want 401" "status $status" "$(cat "$work/nokey.json")"
  request malformed POST /v1/chat/completions -H @"$work/malformed.h" -H 'Content-Type: application/json' -d "$chat"
  [ "$status" = 401 ] && pass "malformed key: 401" || fail "malformed key: want 401" "status $status"

  # 3. A good key on a route needing a scope it lacks (models:read).
  request short GET /v1/models -H @"$work/client.h"
  [ "$status" = 403 ] && pass "key without models:read, GET /v1/models: 403" \
    || fail "key without models:read, GET /v1/models: want 403" "status $status" "$(cat "$work/short.json")"

  # 4. The same request, its route forged in every header convention.
  request forged_route GET /v1/models -H @"$work/client.h" \
    -H 'X-Original-Method: POST' -H 'X-Original-URI: /v1/chat/completions' \
    -H 'X-Forwarded-Method: POST' -H 'X-Forwarded-Uri: /v1/chat/completions'
  if [ "$status" = 403 ] && ! reached_upstream forged_route; then
    pass "forged route headers (GET /v1/models claimed to be a chat request): 403"
  else
    fail "forged route headers: want 403" "status $status" "$(cat "$work/forged_route.json")"
  fi

  # 5. No key, a keyed route dressed up as the public GET /health.
  request forged_public POST /v1/chat/completions -H 'Content-Type: application/json' -d "$chat" \
    -H 'X-Original-Method: GET' -H 'X-Original-URI: /health' \
    -H 'X-Forwarded-Method: GET' -H 'X-Forwarded-Uri: /health'
  if [[ "$status" =~ ^40[13]$ ]] && ! reached_upstream forged_public; then
    pass "no key, route forged as the public /health: $status"
  else
    fail "no key, route forged as a public route: want 401 or 403" "status $status" "$(cat "$work/forged_public.json")"
  fi

  # 6. A key fenced to 10.0.0.0/8, from 127.0.0.1 claiming to be 10.1.2.3.
  request forged_address POST /v1/chat/completions -H @"$work/fenced.h" \
    -H 'Content-Type: application/json' -d "$chat" \
    -H 'X-Real-IP: 10.1.2.3' -H 'X-Forwarded-For: 10.1.2.3'
  if [[ "$status" =~ ^40[13]$ ]] && ! reached_upstream forged_address; then
    pass "key fenced to 10.0.0.0/8, address forged as 10.1.2.3: $status"
  else
    fail "forged address: want 401 or 403" "status $status" "$(cat "$work/forged_address.json")"
  fi

  # 7. Paths that name another route once decoded.
  local path
  for path in '/v1/chat/completions/%2e%2e/%2e%2e/models' '/v1/chat/completions/..%2F..%2Fmodels'; do
    request encoded GET "$path" -H @"$work/client.h"
    if [[ "$status" =~ ^4[0-9][0-9]$ ]] && ! reached_upstream encoded; then
      pass "GET $path: $status, not passed on"
    else
      fail "GET $path: want a refusal" "status $status" "$(cat "$work/encoded.json")"
    fi
  done

  # 8. The key, revoked through the management API, stops working.
  api POST "/v1/keys/$key_id/revoke" '{}' >/dev/null
  local deadline=$((SECONDS + 5))
  while :; do
    request revoked POST /v1/chat/completions -H @"$work/client.h" -H 'Content-Type: application/json' -d "$chat"
    [ "$status" = 401 ] || [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.1
  done
  [ "$status" = 401 ] && pass "revoked key: 401 within 5 s of the revocation" \
    || fail "revoked key: want 401 within 5 s" "status $status"

  # 9. Forward-auth refusals of forged headers are in the audit log.
  if curl -sS "$keyplane_url/v1/audit?action=forward_auth.refused" -H @"$work/admin.h" \
      | jq -e '.items | length > 0' >/dev/null 2>&1; then
    pass "forged headers audited as forward_auth.refused"
  else
    fail "forged headers: want a forward_auth.refused audit entry"
  fi
}

# keyplane gone: nothing reaches the upstream.
check_fails_closed() { # WANT-STATUS
  stop_keyplane
  request down POST /v1/chat/completions -H @"$work/client.h" -H 'Content-Type: application/json' -d "$chat"
  if [ "$status" = "$1" ] && ! reached_upstream down; then
    pass "keyplane unreachable: $status, nothing passed on"
  else
    fail "keyplane unreachable: want $1" "status $status" "$(cat "$work/down.json")"
  fi
}

finish() { # WHAT ERROR-LOG
  if [ "$failures" -gt 0 ]; then
    log "$failures check(s) failed; $1's error log:"
    mask <"$2" >&2
    log "keyplane's log:"
    mask <"$work/keyplane.log" | tail -n 40 >&2
    exit 1
  fi
  log "all checks passed ($1)"
}
