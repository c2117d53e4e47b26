#!/usr/bin/env bash
# The gate against nginx's plain proxy_pass, both in front of the same
# upstream (bench/hello), in one run: throughput and CPU per proxied
# request (wrk -t1 -c32, the gate checking a cached key), and the latency
# the gate adds to a chat completion, streamed and not, over calling the
# upstream directly. Ratios against the same run's baselines, because
# shared machines are noisy. See bench/README.md.
#
#   bench/gate.sh                        # 3 rounds, 10 s per measurement
#   ROUNDS=5 DURATION=20 bench/gate.sh   # SKIP_BUILD=1 reuses the release binaries
#   PINGORA=1 bench/gate.sh              # and Pingora's bare proxy beside them
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
source bench/lib.sh

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
SAMPLES=${SAMPLES:-2000}     # latency: requests of each kind, one at a time

tools=(wrk curl nginx)
[ -z "${PINGORA:-}" ] || tools+=(cmake)   # Pingora's zlib is built with it
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk curl nginx-light cmake >/dev/null 2>&1 ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk curl nginx cmake >/dev/null
    break
  }
done

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --locked -p keyplane-server -p keyplane-gate -p keyplane-bench-hello >&2
  [ -z "${PINGORA:-}" ] ||
    cargo build --release --locked --manifest-path bench/pingora/Cargo.toml --target-dir target >&2
fi
bench_setup

HELLO=18200; NGINX=18201; KEYPLANE=18202; GATE=18203; PINGORA_PORT=18204
gate_fixture $HELLO $KEYPLANE $GATE

# nginx as the issue measures it: one worker, keep-alive to the upstream.
bench_nginx "  upstream hello { server 127.0.0.1:$HELLO; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://hello;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
bench_wait_for "http://127.0.0.1:$NGINX/"

if [ -n "${PINGORA:-}" ]; then
  # One thread, as nginx has one worker; it checks nothing.
  PROXY_LISTEN="127.0.0.1:$PINGORA_PORT" PROXY_UPSTREAM="127.0.0.1:$HELLO" PROXY_THREADS=1 \
    target/release/keyplane-bench-pingora >>"$work/pingora.log" 2>&1 &
  pingora_pid=$!
  bench_pids+=("$pingora_pid")
  bench_wait_for "http://127.0.0.1:$PINGORA_PORT/"
fi

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo "gate against nginx proxy_pass: $(nproc) cores, wrk -t1 -c$CONNECTIONS, ${DURATION}s each, GET /v1/models (the gate checks a cached key)"
for round in $(seq 1 "$ROUNDS"); do
  read -r direct_rps direct_cpu < <(bench_measure "$hello_pid" "http://127.0.0.1:$HELLO/v1/models")
  read -r nginx_rps nginx_cpu < <(bench_measure "$nginx_worker" "http://127.0.0.1:$NGINX/v1/models")
  read -r gate_rps gate_cpu < <(bench_measure "$gate_pid" -H "Authorization: Bearer $key" "http://127.0.0.1:$GATE/v1/models")
  echo "round $round  direct $direct_rps req/s; nginx $nginx_rps req/s ($(ratio "$nginx_rps" "$direct_rps") of direct), ${nginx_cpu} µs CPU/req; gate $gate_rps req/s ($(ratio "$gate_rps" "$direct_rps") of direct), ${gate_cpu} µs CPU/req; gate/nginx $(ratio "$gate_rps" "$nginx_rps") (goal >= 0.90)"
  if [ -n "${PINGORA:-}" ]; then
    read -r pingora_rps pingora_cpu < <(bench_measure "$pingora_pid" "http://127.0.0.1:$PINGORA_PORT/v1/models")
    echo "round $round  pingora (no check) $pingora_rps req/s, ${pingora_cpu} µs CPU/req; pingora/nginx $(ratio "$pingora_rps" "$nginx_rps")"
  fi
done

echo "latency a chat completion sees, $SAMPLES requests of each, one at a time, direct, through nginx and through the gate in turn"
python3 bench/gate_latency.py --direct "http://127.0.0.1:$HELLO" --nginx "http://127.0.0.1:$NGINX" --gate "http://127.0.0.1:$GATE" \
  --key "$key" --samples "$SAMPLES"
