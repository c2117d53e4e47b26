#!/usr/bin/env bash
# keyplane's introspection benchmark: every figure is a ratio against a
# baseline measured in the same run, on the same machine, because shared
# machines are noisy. See bench/README.md for the method and the latest figures.
#
#   bench/introspect.sh                 # 10 s per measurement, 2 tokio workers
#   DURATION=30 WORKERS=1 bench/introspect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh

DURATION=${DURATION:-10}
WORKERS=${WORKERS:-2}
CONNECTIONS=${CONNECTIONS:-32}
RATE=${RATE:-10000}
ROUNDS=${ROUNDS:-200}

for tool in wrk hey curl; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hey curl >/dev/null; break; }
done

cargo build --release --locked -p keyplane-server >&2
bin=target/release/keyplane
start_postgres
"$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres bench
"$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres pgbench
database_url="${KEYPLANE_TEST_DATABASE_URL%/*}/bench"
token="bench-bootstrap-token-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
master=$(head -c 32 /dev/urandom | base64)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  stop_postgres
}
trap cleanup EXIT

# start_keyplane PORT [VAR=VALUE ...]: a release server on this database.
start_keyplane() {
  local port=$1; shift
  env DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$port" KEYPLANE_BOOTSTRAP_TOKEN="$token" \
    KEYPLANE_MASTER_KEY="$master" TOKIO_WORKER_THREADS="$WORKERS" RUST_LOG=warn "$@" \
    "$bin" serve >>"$work/keyplane-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$work/keyplane-$port.log" >&2
  return 1
}
stop_last_keyplane() {
  local last=$(( ${#pids[@]} - 1 ))
  kill "${pids[$last]}"; wait "${pids[$last]}" 2>/dev/null || true
  unset "pids[$last]"; pids=("${pids[@]}")
}

admin() { curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

A=18181; B=18182
start_keyplane $A
base="http://127.0.0.1:$A"
instance=$(admin -d '{"name": "bench", "allowed_scopes": ["inference:chat"]}' "$base/v1/instances" | field id)
node=$(admin -d '{"name": "bench-node"}' "$base/v1/nodes")
node_key=$(printf '%s' "$node" | field secret)
key=$(admin -d '{"name": "bench", "scopes": ["inference:chat"]}' "$base/v1/instances/$instance/keys" | field secret)

cat >"$work/introspect.lua" <<LUA
wrk.method = "POST"
wrk.body = "token=$key&scope=inference:chat"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer $node_key"
LUA

rps() { wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
# p50 and p99 in ms from hey at a fixed offered load (RATE in all, spread over the connections).
latency() {
  hey -z "${DURATION}s" -c "$CONNECTIONS" -q $(( RATE / CONNECTIONS )) "$@" |
    awk '/ 50% in/ {p50 = $3 * 1000} / 99% in/ {p99 = $3 * 1000} END {printf "%.3f %.3f\n", p50, p99}'
}

echo "keyplane introspection benchmark: $(nproc) cores, TOKIO_WORKER_THREADS=$WORKERS, $CONNECTIONS connections, ${DURATION}s each"
curl -fsS -X POST -H "Authorization: Bearer $node_key" -d "token=$key" "$base/v1/introspect" | grep -q '"active":true'

healthz_rps=$(rps "$base/healthz")
cached_rps=$(rps -s "$work/introspect.lua" "$base/v1/introspect")
echo "throughput  healthz $healthz_rps req/s; cached introspection $cached_rps req/s; ratio $(ratio "$cached_rps" "$healthz_rps") (goal >= 0.80)"

read -r h50 h99 < <(latency "$base/healthz")
read -r i50 i99 < <(latency -m POST -T application/x-www-form-urlencoded -H "Authorization: Bearer $node_key" \
  -d "token=$key&scope=inference:chat" "$base/v1/introspect")
echo "latency at $RATE req/s  healthz p50 ${h50} ms p99 ${h99} ms; cached introspection p50 ${i50} ms p99 ${i99} ms; p99 ratio $(ratio "$i99" "$h99") (goal <= 1.5)"

stop_last_keyplane
start_keyplane $A KEYPLANE_INTROSPECTION_CACHE_CAPACITY=0
uncached_rps=$(rps -s "$work/introspect.lua" "$base/v1/introspect")
"$KEYPLANE_PG_BIN/pgbench" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres -i -q pgbench >/dev/null 2>&1
pgbench_tps=$("$KEYPLANE_PG_BIN/pgbench" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres -S -M prepared \
  -c "$CONNECTIONS" -j 1 -T "$DURATION" pgbench 2>/dev/null | awk '/^tps/ {print $3; exit}')
echo "uncached    introspection $uncached_rps req/s; pgbench -S -M prepared $pgbench_tps tps; ratio $(ratio "$uncached_rps" "$pgbench_tps")"
stop_last_keyplane

start_keyplane $A
start_keyplane $B
python3 bench/propagation.py --a "http://127.0.0.1:$A" --b "http://127.0.0.1:$B" --token "$token" \
  --node-key "$node_key" --instance "$instance" --rounds "$ROUNDS"
