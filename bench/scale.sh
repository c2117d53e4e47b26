#!/usr/bin/env bash
# keyplane at a million keys. Two databases side by side, one with 1,000
# keys in 100 instances and one with 1,000,000 keys in 10,000 instances,
# each served by its own keyplane with the cache off, measured in turn
# (ROUNDS times, so both meet the machine at the same moments): uncached
# introspection latency at a fixed load and throughput at saturation,
# start-up time, and then the server's memory per cached key, filling
# 100,000 of them. Keys are written with SQL (COPY); those that requests
# name are made the way keyplane makes them (bench/scale_keys.py), the rest
# only need to be there. See bench/README.md.
#
#   bench/scale.sh                    # SKIP_BUILD=1 reuses the release binary
#   KEYS=200000 bench/scale.sh        # a smaller "large" (for a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh
source bench/lib.sh

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-2000}             # requests/s in all, for the latency figures
KEYS=${KEYS:-1000000}          # keys in all, at the large size
INSTANCES=${INSTANCES:-10000}  # instances in all, at the large size
CACHED=${CACHED:-100000}       # keys filled into the cache for the memory figure

if (( CACHED / 10 > INSTANCES || CACHED > KEYS )); then
  echo "scale.sh: the CACHED keys are 10 an instance: it needs INSTANCES >= CACHED / 10 and KEYS >= CACHED" >&2
  exit 2
fi
for tool in wrk hey curl; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hey curl >/dev/null; break; }
done
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -p keyplane-server >&2
bench_setup
"$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres small
declare -A url=([small]="${database_url%/*}/small" [large]="$database_url")
declare -A port=([small]=18210 [large]=18211)
psql() { "$KEYPLANE_PG_BIN/psql" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres -d "$1" -qAt -v ON_ERROR_STOP=1 "${@:2}"; }
db() { [ "$1" = large ] && echo bench || echo small; }

# fleet SIZE INSTANCES KNOWN STAND-INS: INSTANCES instances in SIZE's
# database; the first KNOWN get 10 real keys each ($work/secrets-SIZE), and
# all of them STAND-INS keys between them, with digests no secret has.
fleet() {
  local size=$1 instances=$2 known=$3 standins=$4 d
  d=$(db "$size")
  DATABASE_URL="${url[$size]}" target/release/keyplane migrate >/dev/null
  psql "$d" -c "insert into instances (id, name, allowed_scopes, created_at, updated_at)
    select gen_random_uuid(), 'jan-' || n, '{inference:chat}', now(), now()
      from generate_series(1, $instances) as n"
  psql "$d" -c "select id from instances where name in
    (select 'jan-' || n from generate_series(1, $known) as n)" >"$work/known"
  python3 bench/scale_keys.py --instances "$work/known" --per-instance 10 --secrets "$work/secrets-$size" |
    psql "$d" -c "copy api_keys (id, instance_id, name, digest, masked, scopes, created_at, expires_at) from stdin"
  [ "$standins" -eq 0 ] || psql "$d" -c "insert into api_keys (id, instance_id, name, digest, masked, scopes, created_at, expires_at)
    select gen_random_uuid(), s.ids[1 + k % s.n], 'bench', sha256(int8send(k)), 'kpi_…0000',
           '{inference:chat}', now(), now() + interval '60 days'
      from generate_series(1, $standins) as k,
           (select array_agg(id) as ids, count(*) as n from instances) as s"
  # Vacuumed and checkpointed as a database in service would be, so that
  # autovacuum does not start on a million new rows mid-measurement.
  psql "$d" -c "vacuum (analyze) instances" -c "vacuum (analyze) api_keys" -c "checkpoint"
}
fleet small 100 100 0
fleet large "$INSTANCES" $(( CACHED / 10 )) $(( KEYS - CACHED ))

# serve SIZE [VAR=VALUE ...]: keyplane on SIZE's database, timed from spawn
# to ready (start_ms[SIZE]), with a node to ask as (node_key[SIZE]).
declare -A start_ms node_key pid
serve() {
  local size=$1 began; shift
  began=$(date +%s%N)
  bench_keyplane "${port[$size]}" DATABASE_URL="${url[$size]}" "$@"
  start_ms[$size]=$(( ($(date +%s%N) - began) / 1000000 ))
  pid[$size]=${bench_pids[-1]}
  [ -n "${node_key[$size]:-}" ] ||
    node_key[$size]=$(curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' \
      -d '{"name": "bench-node"}' "http://127.0.0.1:${port[$size]}/v1/nodes" |
      python3 -c "import json,sys; print(json.load(sys.stdin)['secret'])")
}

# wrk's script: introspect the first COUNT secrets of SIZE in turn, as its node.
lua_for() {
  local size=$1 count=$2
  { echo "keys = {"
    head -n "$count" "$work/secrets-$size" | sed 's/.*/"&",/'
    echo "}"
    cat <<LUA
local n, i = #keys, 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer ${node_key[$size]}"
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, "token=" .. keys[(i % n) + 1] .. "&scope=inference:chat")
end
LUA
  } >"$work/introspect-$size-$count.lua"
}
# throughput SIZE COUNT: req/s at saturation introspecting COUNT keys in turn.
throughput() {
  local out
  lua_for "$1" "$2"
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$work/introspect-$1-$2.lua" "http://127.0.0.1:${port[$1]}/v1/introspect")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "scale.sh: failed answers:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
# latency SIZE: "p50 p99" in ms introspecting one key at RATE requests/s in
# all (hey's per-request times; any answer but 200 voids the run).
latency() {
  local secret
  secret=$(head -n 1 "$work/secrets-$1")
  hey -z "${DURATION}s" -c 16 -q $(( RATE / 16 )) -m POST -T application/x-www-form-urlencoded \
    -H "Authorization: Bearer ${node_key[$1]}" -d "token=$secret&scope=inference:chat" -o csv \
    "http://127.0.0.1:${port[$1]}/v1/introspect" >"$work/hey.csv"
  bench_percentiles "$work/hey.csv"
}
times() { python3 -c "print(f'{$1 / $2:.2f}')"; }

serve small KEYPLANE_INTROSPECTION_CACHE_CAPACITY=0
serve large KEYPLANE_INTROSPECTION_CACHE_CAPACITY=0
for size in small large; do
  curl -fsS -X POST -H "Authorization: Bearer ${node_key[$size]}" --data-urlencode "token=$(head -n 1 "$work/secrets-$size")" \
    "http://127.0.0.1:${port[$size]}/v1/introspect" | grep -q '"active":true' ||
    { echo "scale.sh: a made key is not active at $size" >&2; exit 1; }
done
total=$(psql bench -c "select count(*) from api_keys")
instances=$(psql bench -c "select count(*) from instances")
echo "scale: $(nproc) cores, cache off; 1,000 keys (100 instances) against $total keys ($instances instances), in turn"
echo "ready in: 1,000 keys ${start_ms[small]} ms, $total keys ${start_ms[large]} ms"
for round in $(seq 1 "$ROUNDS"); do
  read -r s50 s99 < <(latency small)
  read -r l50 l99 < <(latency large)
  small_rps=$(throughput small 1000)
  large_rps=$(throughput large 1000)
  spread_rps=$(throughput large "$CACHED")
  echo "round $round  at $RATE req/s, one key: p50 $s50 -> $l50 ms, p99 $s99 -> $l99 ms ($(times "$l99" "$s99")x, goal <= 1.5);" \
    "saturated (wrk -c$CONNECTIONS), 1,000 keys in turn: $small_rps -> $large_rps req/s ($(times "$large_rps" "$small_rps")x);" \
    "$CACHED keys in turn at the large size: $spread_rps req/s"
done
stop_keyplanes() { for p in "${pid[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done; bench_pids=(); }
stop_keyplanes

# Memory: resident set before and after CACHED keys are each introspected
# once (a cache with room for all of them, and a tenth more), per key; the
# misses counted by /metrics say how many were loaded.
serve large KEYPLANE_INTROSPECTION_CACHE_CAPACITY=$(( CACHED * 11 / 10 ))
base="http://127.0.0.1:${port[large]}"
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/${pid[large]}/status"; }
misses() { curl -fsS "$base/metrics" | awk '/^keyplane_introspection_cache_lookups_total\{result="miss"\}/ {print $2}'; }
lua_for large "$CACHED"
fill=(-t1 -c"$CONNECTIONS" -s "$work/introspect-large-$CACHED.lua" "$base/v1/introspect")
# A short warm-up first (connections, threads, the allocator's first
# pages: paid once, not per key), its last-use times written; the keys it
# loaded are not counted.
misses_start=$(misses)
wrk -d2s "${fill[@]}" >/dev/null
sleep 6
before=$(rss)
misses_before=$(misses)
wrk -d120s "${fill[@]}" >/dev/null &
filler=$!
for _ in $(seq 1 1200); do
  [ "$(( $(misses) - misses_start ))" -ge "$CACHED" ] && break
  sleep 0.1
done
kill "$filler" 2>/dev/null; wait "$filler" 2>/dev/null || true
filled=$(rss)
loaded=$(( $(misses) - misses_before ))
# Right after filling, the last-use times of the last 5 s wait for their
# write (two hash map entries a key); once written they are freed, and what
# stays is the cache. Two write periods later:
sleep 11
after=$(rss)
per_key() { echo $(( ($1 - before) / loaded )); }
echo "memory: $loaded keys loaded into the cache: resident $(( before / 1048576 )) MiB -> $(( after / 1048576 )) MiB," \
  "$(per_key "$after") bytes per cached key (goal <= 300); right after filling, with last-use times waiting to be written:" \
  "$(( filled / 1048576 )) MiB, $(per_key "$filled") bytes a key"
