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
source bench/lib.sh

DURATION=${DURATION:-10}
WORKERS=${WORKERS:-2}
CONNECTIONS=${CONNECTIONS:-32}
RATE=${RATE:-10000}
ROUNDS=${ROUNDS:-200}
# Throughput rounds: hello, /healthz and cached introspection, one after
# another, THROUGHPUT_ROUNDS times.
THROUGHPUT_ROUNDS=${THROUGHPUT_ROUNDS:-3}

for tool in wrk hey curl; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hey curl >/dev/null; break; }
done

cargo build --release --locked -p keyplane-server -p keyplane-bench-hello >&2
bench_setup
"$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres pgbench

# start_keyplane PORT [VAR=VALUE ...]: a release server on this database,
# with WORKERS tokio workers.
start_keyplane() { bench_keyplane "$1" TOKIO_WORKER_THREADS="$WORKERS" "${@:2}"; }
stop_last_keyplane() { bench_stop "${bench_pids[-1]}"; }

A=18181; B=18182
start_keyplane $A
base="http://127.0.0.1:$A"
introspect_fixture "$base"

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
# p50 and p99 in ms from hey at a fixed offered load (RATE in all, spread over the connections).
latency() {
  hey -z "${DURATION}s" -c "$CONNECTIONS" -q $(( RATE / CONNECTIONS )) "$@" |
    awk '/ 50% in/ {p50 = $3 * 1000} / 99% in/ {p99 = $3 * 1000} END {printf "%.3f %.3f\n", p50, p99}'
}

echo "keyplane introspection benchmark: $(nproc) cores, TOKIO_WORKER_THREADS=$WORKERS, $CONNECTIONS connections, ${DURATION}s each"
curl -fsS -X POST -H "Authorization: Bearer $node_key" -d "token=$key" "$base/v1/introspect" | grep -q '"active":true'

# The limit: axum's hello world (bench/hello), measured in every round.
HELLO=18180
keyplane_pid=${bench_pids[0]}
HELLO_LISTEN="127.0.0.1:$HELLO" target/release/keyplane-bench-hello >>"$work/hello.log" 2>&1 &
hello_pid=$!
bench_pids+=("$hello_pid")
bench_wait_for "http://127.0.0.1:$HELLO/"
for round in $(seq 1 "$THROUGHPUT_ROUNDS"); do
  read -r hello_rps hello_cpu < <(bench_measure "$hello_pid" "http://127.0.0.1:$HELLO/")
  read -r healthz_rps healthz_cpu < <(bench_measure "$keyplane_pid" "$base/healthz")
  read -r cached_rps cached_cpu < <(bench_measure "$keyplane_pid" -s "$work/introspect.lua" "$base/v1/introspect")
  echo "round $round     hello $hello_rps req/s, ${hello_cpu} µs CPU/req; healthz $healthz_rps req/s, ${healthz_cpu} µs, $(ratio "$healthz_rps" "$hello_rps") of hello (goal >= 0.90); cached introspection $cached_rps req/s, ${cached_cpu} µs, $(ratio "$cached_rps" "$hello_rps") of hello (goal >= 0.80)"
done
bench_stop "$hello_pid"
echo "throughput  healthz $healthz_rps req/s; cached introspection $cached_rps req/s; ratio $(ratio "$cached_rps" "$healthz_rps") (last round, against healthz)"

read -r h50 h99 < <(latency "$base/healthz")
read -r i50 i99 < <(latency -m POST -T application/x-www-form-urlencoded -H "Authorization: Bearer $node_key" \
  -d "token=$key&scope=inference:chat" "$base/v1/introspect")
echo "latency at $RATE req/s  healthz p50 ${h50} ms p99 ${h99} ms; cached introspection p50 ${i50} ms p99 ${i99} ms; p99 ratio $(ratio "$i99" "$h99") (goal <= 1.5)"

stop_last_keyplane
start_keyplane $A KEYPLANE_INTROSPECTION_CACHE_CAPACITY=0
read -r uncached_rps uncached_cpu < <(bench_measure "${bench_pids[-1]}" -s "$work/introspect.lua" "$base/v1/introspect")
"$KEYPLANE_PG_BIN/pgbench" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres -i -q pgbench >/dev/null 2>&1
pgbench_tps=$("$KEYPLANE_PG_BIN/pgbench" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres -S -M prepared \
  -c "$CONNECTIONS" -j 1 -T "$DURATION" pgbench 2>/dev/null | awk '/^tps/ {print $3; exit}')
echo "uncached    introspection $uncached_rps req/s, ${uncached_cpu} µs CPU/req; pgbench -S -M prepared $pgbench_tps tps; ratio $(ratio "$uncached_rps" "$pgbench_tps")"
stop_last_keyplane

start_keyplane $A
start_keyplane $B
python3 bench/propagation.py --a "http://127.0.0.1:$A" --b "http://127.0.0.1:$B" --token "$token" \
  --node-key "$node_key" --instance "$instance" --rounds "$ROUNDS"
