#!/usr/bin/env bash
# How many nodes one keyplane replica's revocation stream can serve: opens
# STREAMS streams (one per registered node, as that many gates would) on one
# release keyplane, and times each revocation to every one of them, against
# the same run's one-stream baseline (bench/fanout.py). See bench/README.md.
#
#   bench/fanout.sh                        # 1,000 streams, 30 revocations
#   STREAMS=2000 ROUNDS=50 bench/fanout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh

STREAMS=${STREAMS:-1000}
ROUNDS=${ROUNDS:-30}
WORKERS=${WORKERS:-2}

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -p keyplane-server >&2
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

ulimit -n "$(( STREAMS * 2 + 1024 ))" 2>/dev/null || true
port=18185
# Registering the nodes is operator work: lift the per-key management rate.
env DATABASE_URL="${KEYPLANE_TEST_DATABASE_URL%/*}/bench" KEYPLANE_LISTEN="127.0.0.1:$port" \
  KEYPLANE_BOOTSTRAP_TOKEN="$token" KEYPLANE_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" \
  KEYPLANE_RATE_OPERATOR=1000000 TOKIO_WORKER_THREADS="$WORKERS" RUST_LOG=warn \
  target/release/keyplane serve >>"$work/keyplane.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $STREAMS streams, $ROUNDS revocations"
python3 bench/fanout.py --base "http://127.0.0.1:$port" --token "$token" --streams "$STREAMS" --rounds "$ROUNDS"
