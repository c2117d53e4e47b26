#!/usr/bin/env bash
# Is this tree's keyplane cheaper a request than another build of it? Runs
# both on one database with bench/hello beside them and measures, in turn
# and ROUNDS times so both meet the same machine at the same moments,
# `/healthz` and cached introspection on each: req/s, the server's CPU per
# request, and the share of hello's rate. Lighter than bench/compare.sh,
# which builds a revision and runs the whole of bench/introspect.sh.
#
#   cp target/release/keyplane /tmp/keyplane-before   # before a change
#   BEFORE=/tmp/keyplane-before bench/ab.sh            # after it
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
source bench/lib.sh

: "${BEFORE:?BEFORE=path of the keyplane binary to compare with}"
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}

[ -n "${SKIP_BUILD:-}" ] ||
  cargo build --release --locked -p keyplane-server -p keyplane-bench-hello >&2
bench_setup

HELLO=18210; OLD=18211; NEW=18212
HELLO_LISTEN="127.0.0.1:$HELLO" target/release/keyplane-bench-hello >>"$work/hello.log" 2>&1 &
hello_pid=$!
bench_pids+=("$hello_pid")
bench_wait_for "http://127.0.0.1:$HELLO/"
KEYPLANE_BIN=$BEFORE bench_keyplane $OLD TOKIO_WORKER_THREADS=2
old_pid=${bench_pids[-1]}
bench_keyplane $NEW TOKIO_WORKER_THREADS=2
new_pid=${bench_pids[-1]}
# One key and node for both: they share the database.
introspect_fixture "http://127.0.0.1:$NEW"

share() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "this tree against $BEFORE: $(nproc) cores, wrk -t1 -c$CONNECTIONS, ${DURATION}s each; req/s, µs of CPU a request, share of hello"
for round in $(seq 1 "$ROUNDS"); do
  read -r hello_rps hello_cpu < <(bench_measure "$hello_pid" "http://127.0.0.1:$HELLO/")
  line="round $round  hello $hello_rps, $hello_cpu µs"
  for target in healthz introspect; do
    for side in before after; do
      case $side in before) pid=$old_pid port=$OLD ;; after) pid=$new_pid port=$NEW ;; esac
      case $target in
        healthz) args=("http://127.0.0.1:$port/healthz") ;;
        introspect) args=(-s "$work/introspect.lua" "http://127.0.0.1:$port/v1/introspect") ;;
      esac
      read -r rps cpu < <(bench_measure "$pid" "${args[@]}")
      line+="; $target $side $rps, $cpu µs, $(share "$rps" "$hello_rps")"
    done
  done
  echo "$line"
done
