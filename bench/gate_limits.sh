#!/usr/bin/env bash
# What limits cost at the gate: the latency a chat completion sees directly
# at the upstream, through the gate with a key without limits, and through
# the gate with a key held to every limit (rpm, tpm, daily and monthly
# budgets, a model allow-list), all in one run at the same fixed load.
# Reported as differences of medians against the same run's baselines,
# because shared machines are noisy. See bench/README.md.
#
#   bench/gate_limits.sh                    # 10 s per measurement
#   DURATION=30 RATE=500 bench/gate_limits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
source bench/lib.sh

DURATION=${DURATION:-10}
RATE=${RATE:-400}            # requests per second, in all
CONNECTIONS=${CONNECTIONS:-8}
ROUNDS=${ROUNDS:-3}

for tool in hey curl nginx; do
  command -v "$tool" >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey curl nginx-light >/dev/null 2>&1 ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey curl nginx >/dev/null
    break
  }
done

cargo build --release --locked -p keyplane-server -p keyplane-gate >&2
bench_setup

# The upstream: nginx answering every chat completion with the same body,
# usage block included, as fast as anything on this machine can.
UPSTREAM=18190; KEYPLANE=18191; GATE_FREE=18192; GATE_LIMITED=18193
answer='{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}'
bench_nginx "  server {
    listen 127.0.0.1:$UPSTREAM;
    location / { default_type application/json; return 200 '$answer'; }
  }"
bench_wait_for "http://127.0.0.1:$UPSTREAM/v1/models"

bench_keyplane $KEYPLANE
base="http://127.0.0.1:$KEYPLANE"
admin() { curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

instance=$(admin -d '{"name": "bench", "allowed_scopes": ["inference:chat"]}' "$base/v1/instances" | field id)
free_key=$(admin -d '{"name": "free", "scopes": ["inference:chat"]}' "$base/v1/instances/$instance/keys" | field secret)
limited_key=$(admin -d '{"name": "limited", "scopes": ["inference:chat"],
  "limits": {"rpm": 10000000, "tpm": 10000000000, "daily_tokens": 10000000000000, "monthly_tokens": 300000000000000},
  "models": ["bench*"]}' "$base/v1/instances/$instance/keys" | field secret)

# start_gate PORT: a release gate of its own (its own node) in front of the upstream.
start_gate() {
  local node
  node=$(admin -d "{\"name\": \"gate-$1\"}" "$base/v1/nodes" | field secret)
  env KEYPLANE_URL="$base" KEYPLANE_NODE_KEY="$node" KEYPLANE_GATE_UPSTREAM="http://127.0.0.1:$UPSTREAM" \
    KEYPLANE_GATE_LISTEN="127.0.0.1:$1" RUST_LOG=warn target/release/keyplane-gate >>"$work/gate-$1.log" 2>&1 &
  bench_pids+=($!)
  bench_wait_for "http://127.0.0.1:$1/_keyplane/healthz"
}
start_gate $GATE_FREE
start_gate $GATE_LIMITED

body="$work/chat.json"
printf '%s' '{"model":"bench-model","max_tokens":16,"messages":[{"role":"user","content":"How fast is the gate?"}]}' >"$body"

# p50 and p99 in ms at RATE requests/s in all, from hey's per-request
# times (its summary rounds to 0.1 ms); any answer but 200 voids the run.
latency() {
  local url=$1 key=$2
  hey -z "${DURATION}s" -c "$CONNECTIONS" -q $(( RATE / CONNECTIONS )) -m POST -T application/json \
    -D "$body" -H "Authorization: Bearer $key" -o csv "$url/v1/chat/completions" >"$work/hey.csv"
  bench_percentiles "$work/hey.csv"
}

# Warm every path (connections, caches, the first lease).
for _ in 1 2 3; do
  curl -fsS -o /dev/null -H "Authorization: Bearer $free_key" -H 'content-type: application/json' \
    --data-binary @"$body" "http://127.0.0.1:$GATE_FREE/v1/chat/completions"
  curl -fsS -o /dev/null -H "Authorization: Bearer $limited_key" -H 'content-type: application/json' \
    --data-binary @"$body" "http://127.0.0.1:$GATE_LIMITED/v1/chat/completions"
done

echo "gate latency at $RATE req/s, $CONNECTIONS connections, ${DURATION}s each, p50 / p99 in ms"
for round in $(seq 1 "$ROUNDS"); do
  read -r d50 d99 < <(latency "http://127.0.0.1:$UPSTREAM" none)
  read -r f50 f99 < <(latency "http://127.0.0.1:$GATE_FREE" "$free_key")
  read -r l50 l99 < <(latency "http://127.0.0.1:$GATE_LIMITED" "$limited_key")
  python3 - "$round" "$d50" "$d99" "$f50" "$f99" "$l50" "$l99" <<'PY'
import sys
r, d50, d99, f50, f99, l50, l99 = sys.argv[1], *map(float, sys.argv[2:])
print(f"round {r}: direct {d50:.3f} / {d99:.3f}; gate {f50:.3f} / {f99:.3f}; "
      f"gate with limits {l50:.3f} / {l99:.3f}")
print(f"         gate overhead over direct: p50 +{f50 - d50:.3f} ms, p99 +{f99 - d99:.3f} ms; "
      f"limits over the gate: p50 {l50 - f50:+.3f} ms (goal <= 0.3), p99 {l99 - f99:+.3f} ms")
PY
done
