# What the bench scripts share; sourced after scripts/lib/postgres.sh.

# bench_setup: a throwaway PostgreSQL with a database "bench"
# ($database_url), a bootstrap token ($token), a scratch directory ($work),
# and, on exit, every process in $bench_pids stopped and all of it removed.
bench_setup() {
  start_postgres
  "$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres bench
  database_url="${KEYPLANE_TEST_DATABASE_URL%/*}/bench"
  token="bench-bootstrap-token-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  work=$(mktemp -d)
  bench_pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  stop_postgres
}

# bench_keyplane PORT [VAR=VALUE ...]: the release keyplane on $database_url,
# in $bench_pids, once it is ready. The node's own rate limit is lifted: a
# benchmark counts answers, and a 429 is not one.
bench_keyplane() {
  local port=$1; shift
  env DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$port" KEYPLANE_BOOTSTRAP_TOKEN="$token" \
    KEYPLANE_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" KEYPLANE_RATE_NODE=100000000 RUST_LOG=warn "$@" \
    target/release/keyplane serve >>"$work/keyplane-$port.log" 2>&1 &
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
