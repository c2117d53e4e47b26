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
source bench/lib.sh

STREAMS=${STREAMS:-1000}
ROUNDS=${ROUNDS:-30}
WORKERS=${WORKERS:-2}

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -p keyplane-server -p keyplane-bench-fanout >&2
bench_setup
ulimit -n "$(( STREAMS * 2 + 1024 ))" 2>/dev/null || true
port=18185
# Registering the nodes is operator work: lift the per-key management rate.
bench_keyplane $port KEYPLANE_RATE_OPERATOR=1000000 TOKIO_WORKER_THREADS="$WORKERS"
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $STREAMS streams, $ROUNDS revocations"
python3 bench/fanout.py --base "http://127.0.0.1:$port" --token "$token" --streams "$STREAMS" --rounds "$ROUNDS"
