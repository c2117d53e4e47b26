#!/usr/bin/env bash
# Where keyplane's CPU goes on the hot path: a release keyplane on a
# throwaway PostgreSQL, under wrk (-t1 -c32) on one target, sampled by
# perf, with the functions that take the most of it printed (self time,
# and with what they call) and its CPU a request layer by layer
# (bench/layers.py). See bench/README.md.
#
#   bench/profile.sh healthz              # or: introspect, uncached, hello, gate
#   DURATION=20 bench/profile.sh introspect
#   KEEP=/tmp/gate.data bench/profile.sh gate   # keeps perf's samples to look further
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
source bench/lib.sh

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
[ -n "${SKIP_BUILD:-}" ] ||
  cargo build --release --locked -p keyplane-server -p keyplane-gate -p keyplane-bench-hello >&2
bin=target/release
bench_setup
port=18187
base="http://127.0.0.1:$port"
case "$TARGET" in
  hello)
    HELLO_LISTEN="127.0.0.1:$port" "$bin/keyplane-bench-hello" >>"$work/hello.log" 2>&1 &
    bench_pids+=($!)
    for _ in $(seq 1 100); do curl -fsS "$base/" >/dev/null 2>&1 && break; sleep 0.1; done
    wrk_args=("$base/") ;;
  healthz)
    bench_keyplane $port TOKIO_WORKER_THREADS=2
    wrk_args=("$base/healthz") ;;
  introspect)
    bench_keyplane $port TOKIO_WORKER_THREADS=2
    introspect_fixture "$base"
    wrk_args=(-s "$work/introspect.lua" "$base/v1/introspect") ;;
  uncached)
    # Introspection with the key cache off: every request reads PostgreSQL.
    bench_keyplane $port TOKIO_WORKER_THREADS=2 KEYPLANE_INTROSPECTION_CACHE_CAPACITY=0
    introspect_fixture "$base"
    wrk_args=(-s "$work/introspect.lua" "$base/v1/introspect") ;;
  gate)
    # The gate forwarding GET /v1/models to hello, with a cached key.
    gate_fixture $((port + 1)) $((port + 2)) $port
    wrk_args=(-H "Authorization: Bearer $key" "$base/v1/models") ;;
  *) echo "profile.sh: hello, healthz, introspect, uncached or gate" >&2; exit 2 ;;
esac
pid=${gate_pid:-${bench_pids[0]}}

wrk -t1 -c32 -d"$((DURATION + 2))s" "${wrk_args[@]}" >"$work/wrk.txt" &
wrk_pid=$!
sleep 1
perf record -F 999 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$DURATION" 2>/dev/null
wait "$wrk_pid"
grep -E "Requests/sec|Non-2xx" "$work/wrk.txt"
report() { perf report -i "$work/perf.data" -g none --percent-limit 0.1 --stdio "$@" 2>/dev/null | grep -E '^ +[0-9]' | sed -E 's/ +/ /g; s/( -)+ *$//' || true; }
echo "== self time, top $TOP =="
report --no-children --sort dso,symbol | head -n "$TOP"
echo "== with what they call, top $TOP =="
report --children --sort symbol | head -n "$TOP"
# Requests served while perf sampled, from wrk's steady rate.
requests=$(awk -v seconds="$DURATION" '/Requests\/sec/ {print $2 * seconds}' "$work/wrk.txt")
echo "== by layer, µs of CPU a request (bench/layers.py) =="
perf script -i "$work/perf.data" -F ip,sym 2>/dev/null | python3 bench/layers.py --requests "$requests"
[ -z "${KEEP:-}" ] || cp "$work/perf.data" "$KEEP"
