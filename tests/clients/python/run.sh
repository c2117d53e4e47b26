#!/usr/bin/env bash
# Generates a Python client from openapi/openapi.json with openapi-python-client
# and runs test_generated_client.py against a real keyplane on the database
# server named by KEYPLANE_TEST_DATABASE_URL (scripts/test sets it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
: "${KEYPLANE_TEST_DATABASE_URL:?run through scripts/test, which starts PostgreSQL}"

venv="$root/target/python-venv"
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

printf 'post_hooks: []\ncontent_type_overrides:\n  application/x-ndjson: application/octet-stream\n' >"$work/config.yml"
(cd "$work" && "$venv/bin/openapi-python-client" generate --path "$root/openapi/openapi.json" \
  --meta none --output-path keyplane_client --config config.yml >/dev/null)

database="keyplane_python_$$"
admin_url=$KEYPLANE_TEST_DATABASE_URL
"${KEYPLANE_PG_BIN:-/usr/bin}/psql" "$admin_url" -qAt -c "create database $database" >/dev/null
database_url="${admin_url%/*}/$database"

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token="python-client-bootstrap-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$port" KEYPLANE_BOOTSTRAP_TOKEN="$token" \
  "$root/target/debug/keyplane" serve >"$work/server.log" 2>&1 &
server_pid=$!
"$venv/bin/python" - "http://127.0.0.1:$port/readyz" <<'PY' || { cat "$work/server.log" >&2; exit 1; }
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        break
    except Exception:
        if time.monotonic() > deadline:
            sys.exit("keyplane did not become ready")
        time.sleep(0.1)
PY

KEYPLANE_URL="http://127.0.0.1:$port" KEYPLANE_TOKEN="$token" PYTHONPATH="$work" \
  "$venv/bin/pytest" -q -p no:cacheprovider "$here/test_generated_client.py"
