# What the bench scripts share; sourced after scripts/lib/postgres.sh.

# bench_setup: a throwaway PostgreSQL with a database "bench"
# ($database_url), a bootstrap token ($token), a master key ($master), a
# scratch directory ($work),
# and, on exit, every process in $bench_pids stopped and all of it removed.
bench_setup() {
  start_postgres
  "$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres bench
  database_url="${KEYPLANE_TEST_DATABASE_URL%/*}/bench"
  token="bench-bootstrap-token-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  master=$(head -c 32 /dev/urandom | base64)
  work=$(mktemp -d)
  bench_pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
  stop_postgres
}

# bench_keyplane PORT [VAR=VALUE ...]: the release keyplane ($KEYPLANE_BIN if
# set) on $database_url, in $bench_pids, once it is ready. The node's own
# rate limits (its requests, and its lookups of keys no cache holds) are
# lifted: a benchmark counts answers, and a 429 is not one.
bench_keyplane() {
  local port=$1; shift
  env DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$port" KEYPLANE_BOOTSTRAP_TOKEN="$token" \
    KEYPLANE_MASTER_KEY="$master" KEYPLANE_RATE_NODE=100000000 KEYPLANE_RATE_MISSES_NODE=100000000 \
    KEYPLANE_RATE_MISSES_ADDRESS=100000000 RUST_LOG=warn "$@" "${KEYPLANE_BIN:-target/release/keyplane}" serve >>"$work/keyplane-$port.log" 2>&1 &
  bench_pids+=($!)
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  cat "$work/keyplane-$port.log" >&2
  return 1
}

# introspect_fixture BASE: an instance, a node and a chat key on keyplane at
# BASE ($instance, $node_key, $key), and $work/introspect.lua, which makes
# wrk introspect that key as that node.
introspect_fixture() {
  local base=$1
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
}

# bench_wait_for CURL-ARGS...: until curl gets a 2xx from them (30 s at most).
bench_wait_for() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$@" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not up: $*" >&2
  return 1
}

# gate_fixture HELLO-PORT KEYPLANE-PORT GATE-PORT: bench/hello as the
# upstream ($hello_pid), keyplane, and a release gate ($gate_pid) in front
# of hello checking keys with it; $key holds inference:chat and models:read.
gate_fixture() {
  local hello=$1 keyplane=$2 gate=$3 base="http://127.0.0.1:$2" instance node_key
  HELLO_LISTEN="127.0.0.1:$hello" target/release/keyplane-bench-hello >>"$work/hello.log" 2>&1 &
  hello_pid=$!
  bench_pids+=("$hello_pid")
  bench_wait_for "http://127.0.0.1:$hello/"
  bench_keyplane "$keyplane"
  admin() { curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
  field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
  instance=$(admin -d '{"name": "bench", "allowed_scopes": ["inference:chat", "models:read"]}' "$base/v1/instances" | field id)
  key=$(admin -d '{"name": "bench", "scopes": ["inference:chat", "models:read"]}' "$base/v1/instances/$instance/keys" | field secret)
  node_key=$(admin -d '{"name": "bench-gate"}' "$base/v1/nodes" | field secret)
  env KEYPLANE_URL="$base" KEYPLANE_NODE_KEY="$node_key" KEYPLANE_GATE_UPSTREAM="http://127.0.0.1:$hello" \
    KEYPLANE_GATE_LISTEN="127.0.0.1:$gate" ${GATE_WORKERS:+TOKIO_WORKER_THREADS=$GATE_WORKERS} RUST_LOG=warn \
    target/release/keyplane-gate >>"$work/gate.log" 2>&1 &
  gate_pid=$!
  bench_pids+=("$gate_pid")
  bench_wait_for "http://127.0.0.1:$gate/_keyplane/healthz"
  bench_wait_for -H "Authorization: Bearer $key" "http://127.0.0.1:$gate/v1/models"
}

# bench_measure PID WRK-ARGS...: "req/s µs-of-CPU-per-request" of process
# PID (user + system time from /proc, steadier than req/s on a shared
# machine) under wrk -t1 -c$CONNECTIONS for $DURATION s. Any answer but a
# 2xx, or a socket error, fails the run: it is not throughput.
bench_measure() {
  local pid=$1 before after out
  shift
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$@")
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    echo "${0##*/}: failed answers from $*:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v before="$before" -v after="$after" -v ticks="$(getconf CLK_TCK)" '
    / requests in / {requests = $1}
    /Requests\/sec/ {rps = $2}
    END {printf "%s %.1f\n", rps, (after - before) / ticks * 1e6 / requests}' <<<"$out"
}

# bench_percentiles CSV: "p50 p99" in ms from hey's per-request times
# (`hey -o csv`; its summary rounds to 0.1 ms). Any answer but 200 voids
# the run.
bench_percentiles() {
  python3 - "$1" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bad = [r["status-code"] for r in rows if r["status-code"] != "200"]
if not rows or bad:
    sys.exit(f"{len(bad)} of {len(rows)} answers were not 200 ({sorted(set(bad))}): the run is void")
times = sorted(float(r["response-time"]) * 1000 for r in rows)
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"{pick(0.50):.3f} {pick(0.99):.3f}")
PY
}

# bench_stop PID: stops a process started for the run, and forgets it.
bench_stop() {
  local pid=$1 kept=() other
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for other in "${bench_pids[@]}"; do [ "$other" = "$pid" ] || kept+=("$other"); done
  bench_pids=("${kept[@]}")
}

# bench_nginx HTTP-BLOCK: nginx with one worker, its files in $work/nginx,
# serving what HTTP-BLOCK (upstreams, servers) says; $nginx_worker is its
# worker's pid. bench_cleanup stops it.
bench_nginx() {
  mkdir -p "$work/nginx/logs"
  chmod 755 "$work"
  cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
$1
}
NGINX
  nginx -p "$work/nginx" -c "$work/nginx.conf"
  nginx_worker=$(pgrep -P "$(cat "$work/nginx.pid")")
}
