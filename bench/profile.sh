#!/usr/bin/env bash
# Where keyplane's CPU goes on the hot path: a release keyplane on a
# throwaway PostgreSQL, under wrk (-t1 -c32) on one target, sampled by
# perf, with the functions that take the most of it printed (self time,
# and with what they call). See bench/README.md, "Where the time goes".
#
#   bench/profile.sh healthz              # or: introspect, hello
#   DURATION=20 bench/profile.sh introspect
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh

TARGET=${1:-healthz}
DURATION=${DURATION:-10}
TOP=${TOP:-40}
for tool in wrk perf curl; do
  command -v "$tool" >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk curl linux-perf >/dev/null
    break
  }
done

# The release build as shipped; perf unwinds its stacks from DWARF CFI.
cargo build --release --locked -p keyplane-server -p keyplane-bench-hello >&2
bin=target/release
start_postgres
"$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres bench
token="bench-bootstrap-token-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
  stop_postgres
}
trap cleanup EXIT

port=18187
if [ "$TARGET" = hello ]; then
  HELLO_LISTEN="127.0.0.1:$port" "$bin/keyplane-bench-hello" >>"$work/server.log" 2>&1 &
else
  env DATABASE_URL="${KEYPLANE_TEST_DATABASE_URL%/*}/bench" KEYPLANE_LISTEN="127.0.0.1:$port" \
    KEYPLANE_BOOTSTRAP_TOKEN="$token" KEYPLANE_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" \
    KEYPLANE_RATE_NODE=100000000 TOKIO_WORKER_THREADS=2 RUST_LOG=warn \
    "$bin/keyplane" serve >>"$work/server.log" 2>&1 &
fi
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 300); do curl -fsS "$base/${TARGET/hello/}" >/dev/null 2>&1 && break; curl -fsS "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

wrk_args=("$base/")
case "$TARGET" in
  hello) ;;
  healthz) wrk_args=("$base/healthz") ;;
  introspect)
    admin() { curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
    field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
    instance=$(admin -d '{"name": "bench", "allowed_scopes": ["inference:chat"]}' "$base/v1/instances" | field id)
    node_key=$(admin -d '{"name": "bench-node"}' "$base/v1/nodes" | field secret)
    key=$(admin -d '{"name": "bench", "scopes": ["inference:chat"]}' "$base/v1/instances/$instance/keys" | field secret)
    cat >"$work/introspect.lua" <<LUA
wrk.method = "POST"
wrk.body = "token=$key&scope=inference:chat"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer $node_key"
LUA
    wrk_args=(-s "$work/introspect.lua" "$base/v1/introspect") ;;
  *) echo "profile.sh: hello, healthz or introspect" >&2; exit 2 ;;
esac

wrk -t1 -c32 -d"$((DURATION + 2))s" "${wrk_args[@]}" >"$work/wrk.txt" &
wrk_pid=$!
sleep 1
perf record -F 999 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$DURATION" 2>/dev/null
wait "$wrk_pid"
grep -E "Requests/sec|Non-2xx" "$work/wrk.txt"
report() { perf report -i "$work/perf.data" -g none --percent-limit 0.1 --stdio "$@" 2>/dev/null | grep -E '^ +[0-9]' || true; }
echo "== self time, top $TOP =="
report --no-children --sort dso,symbol | head -n "$TOP"
echo "== with what they call, top $TOP =="
report --children --sort symbol | head -n "$TOP"
