#!/usr/bin/env bash
# Fuzzes a real keyplane with schemathesis, from the OpenAPI document the
# server itself serves at /openapi.json, as an admin: no answer may be a 5xx,
# and every answer must have a documented status code and match its schema.
#
# Runs on the database server named by KEYPLANE_TEST_DATABASE_URL (scripts/test
# sets it) against target/debug/keyplane, which must already be built.
#   FUZZ_EXAMPLES  generated test cases per operation (default 10: the bounded
#                  run of the test suite); FUZZ_EXAMPLES=200 for a longer run
#   FUZZ_SEED      the seed (fixed by default, so a failure can be replayed)
#   FUZZ_PASSES    which passes to run (default "node forward-auth management")
# Extra arguments go to each pass's `schemathesis run` (e.g.
# FUZZ_PASSES=management tests/fuzz/run.sh --include-path-regex '^/v1/keys').
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${KEYPLANE_TEST_DATABASE_URL:?run through scripts/test, which starts PostgreSQL}"
examples=${FUZZ_EXAMPLES:-10}
seed=${FUZZ_SEED:-20240601}
psql="${KEYPLANE_PG_BIN:-/usr/bin}/psql"

venv="$root/target/fuzz-venv"
if [ ! -x "$venv/bin/schemathesis" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi

work=$(mktemp -d)
server_pid=
database=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$database" ]; then
    "$psql" "$KEYPLANE_TEST_DATABASE_URL" -qAt -c "drop database if exists $database with (force)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

database="keyplane_fuzz_$$"
admin_url=$KEYPLANE_TEST_DATABASE_URL
"$psql" "$admin_url" -qAt -c "create database $database" >/dev/null
database_url="${admin_url%/*}/$database"

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token="fuzz-bootstrap-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
base="http://127.0.0.1:$port"
mkdir "$work/data"
# The fuzzer sends thousands of management requests a minute, some with bad
# credentials: lift the per-operator and failed-authentication limits so that
# its requests reach the handlers rather than a 429.
DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$port" KEYPLANE_BOOTSTRAP_TOKEN="$token" \
  KEYPLANE_DATA_DIR="$work/data" KEYPLANE_RATE_OPERATOR=1000000 KEYPLANE_RATE_AUTH_FAILURES=1000000 \
  "$root/target/debug/keyplane" serve >"$work/server.log" 2>&1 &
server_pid=$!
server_log() {
  echo "--- keyplane log ($work/server.log) ---" >&2
  sed 's/\x1b\[[0-9;]*m//g' "$work/server.log" >&2
}

cp "$here/schemathesis.toml" "$work/schemathesis.toml"
KEYPLANE_FUZZ_TOKEN="$token" "$venv/bin/python" "$here/setup.py" "$base" "$work/secrets.env" "$work/dictionaries.toml" \
  || { server_log; exit 1; }
cat "$work/dictionaries.toml" >>"$work/schemathesis.toml"
# shellcheck disable=SC1091
source "$work/secrets.env"

# Three passes, each its own `schemathesis run`: the node routes first, while
# the live key and node key that setup.py made still work (the management pass
# finds them through the list routes and revokes, suspends or deletes them);
# forward auth apart from introspection, because schemathesis 4 builds one
# HTTP session per worker with the headers of the first operation it runs and
# keeps them for the rest (forward auth's X-Keyplane-Node-Key would ride along
# on every introspection); then the management routes. FUZZ_PASSES picks them.
node_ops=(--include-operation-id introspect --include-operation-id node_heartbeat)
forward_auth_ops=(--include-operation-id check_access --include-operation-id check_access_post)
management_ops=(--exclude-operation-id introspect --exclude-operation-id node_heartbeat
  --exclude-operation-id check_access --exclude-operation-id check_access_post
  --exclude-path /v1/revocations/stream)
fuzz() {
  # In the scratch directory, so that nothing schemathesis writes lands in the tree.
  # One worker: schemathesis' workers are threads, and CPython 3.11 can fail
  # `ast.parse` in concurrent threads ("AST constructor recursion depth mismatch").
  # The credentials reach it through the environment (schemathesis.toml names
  # them), not its command line, where any local user could read them.
  (cd "$work" && KEYPLANE_FUZZ_TOKEN="$token" KEYPLANE_FUZZ_NODE_KEY="$KEYPLANE_FUZZ_NODE_KEY" \
    KEYPLANE_FUZZ_API_KEY="$KEYPLANE_FUZZ_API_KEY" \
    "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" \
    run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance \
    --max-examples "$examples" \
    --seed "$seed" \
    --request-timeout 10 \
    --workers 1 \
    --generation-database none \
    --no-color \
    "$@")
}

status=0
for pass in ${FUZZ_PASSES:-node forward-auth management}; do
  echo "=== fuzz pass: $pass ($examples examples per operation, seed $seed) ==="
  case $pass in
    node) fuzz "${node_ops[@]}" "$@" || status=1 ;;
    forward-auth) fuzz "${forward_auth_ops[@]}" "$@" || status=1 ;;
    management) fuzz "${management_ops[@]}" "$@" || status=1 ;;
    *) echo "unknown pass in FUZZ_PASSES: $pass" >&2; exit 2 ;;
  esac
done
if [ "$status" -ne 0 ]; then
  server_log
fi
exit "$status"
