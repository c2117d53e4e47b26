#!/usr/bin/env bash
# A flood of made-up keys against introspection, and what it does to
# everyone else. Anyone can mint well-formed keys (the checksum is public),
# and each one no cache knows costs a database lookup; keyplane budgets those
# lookups per node and per client address. This measures, in one run:
#
#   - a node introspecting its good (cached) key, alone and under the flood;
#   - an operator reading the management API (the database pool), alone and
#     under the flood;
#   - the flood itself: distinct random well-formed keys, about FLOOD_RATE
#     a second, for FLOOD_SECONDS, through one node.
#
# Every figure under the flood is reported as a ratio of the same figure
# measured alone in the same run (shared machines are noisy).
#
#   bench/flood.sh                                  # 10,000 keys/s for 30 s
#   FLOOD_RATE=20000 FLOOD_SECONDS=60 bench/flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh

FLOOD_RATE=${FLOOD_RATE:-10000}
FLOOD_SECONDS=${FLOOD_SECONDS:-30}
PROBE_SECONDS=${PROBE_SECONDS:-10}
WORKERS=${WORKERS:-2}

for tool in wrk hey curl; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hey curl >/dev/null; break; }
done

cargo build --release --locked -p keyplane-server >&2
bin=target/release/keyplane
start_postgres
"$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres flood
database_url="${KEYPLANE_TEST_DATABASE_URL%/*}/flood"
token="flood-bootstrap-token-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  stop_postgres
}
trap cleanup EXIT

port=18191
base="http://127.0.0.1:$port"
DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$port" KEYPLANE_BOOTSTRAP_TOKEN="$token" \
  KEYPLANE_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" TOKIO_WORKER_THREADS="$WORKERS" \
  KEYPLANE_RATE_NODE=1000000 KEYPLANE_RATE_OPERATOR=1000000 RUST_LOG=warn \
  "$bin" serve >>"$work/keyplane.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do curl -fsS "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

admin() { curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
instance=$(admin -d '{"name": "flood", "allowed_scopes": ["inference:chat"]}' "$base/v1/instances" | field id)
node_key=$(admin -d '{"name": "flood-node"}' "$base/v1/nodes" | field secret)
key=$(admin -d '{"name": "good", "scopes": ["inference:chat"]}' "$base/v1/instances/$instance/keys" | field secret)
curl -fsS -X POST -H "Authorization: Bearer $node_key" -d "token=$key" "$base/v1/introspect" | grep -q '"active":true'

# The good key, introspected by its node.
cat >"$work/good.lua" <<LUA
wrk.method = "POST"
wrk.body = "token=$key&scope=inference:chat"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer $node_key"
-- Each thread counts in its own state; done() adds them up.
local threads = {}
function setup(thread) table.insert(threads, thread) end
bad = 0
function response(status) if status ~= 200 then bad = bad + 1 end end
function done(summary)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("bad") end
  io.write(string.format("non-200 %d\n", total))
end
LUA

# The flood: a new random, well-formed instance key (valid CRC32 checksum)
# for every request, paced by wrk's per-connection delay.
connections=32
delay_ms=$(python3 -c "print(max(0, round($connections * 1000 / $FLOOD_RATE)))")
cat >"$work/flood.lua" <<LUA
local bit = require("bit")
local alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local table_ = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if bit.band(c, 1) == 1 then c = bit.bxor(bit.rshift(c, 1), 0xEDB88320) else c = bit.rshift(c, 1) end
  end
  table_[i] = c
end
local function crc32(s)
  local crc = 0xFFFFFFFF
  for i = 1, #s do
    crc = bit.bxor(bit.rshift(crc, 8), table_[bit.band(bit.bxor(crc, s:byte(i)), 0xFF)])
  end
  crc = bit.bxor(crc, 0xFFFFFFFF)
  if crc < 0 then crc = crc + 4294967296 end
  return crc
end
local function made_up_key()
  local body = {}
  for i = 1, 32 do local n = math.random(1, 62); body[i] = alphabet:sub(n, n) end
  local signed = "kpi_" .. table.concat(body)
  local value, checksum = crc32(signed), {}
  for i = 6, 1, -1 do local d = value % 62; checksum[i] = alphabet:sub(d + 1, d + 1); value = (value - d) / 62 end
  return signed .. table.concat(checksum)
end
function init() math.randomseed(os.time() + math.floor(os.clock() * 1000000)) end
function request()
  return wrk.format("POST", "/v1/introspect", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "Bearer $node_key",
  }, "token=" .. made_up_key())
end
function delay() return $delay_ms end
local threads = {}
function setup(thread) table.insert(threads, thread) end
answered, refused = 0, 0
function response(status)
  if status == 429 then refused = refused + 1 else answered = answered + 1 end
end
function done(summary)
  local a, r = 0, 0
  for _, thread in ipairs(threads) do a = a + thread:get("answered"); r = r + thread:get("refused") end
  io.write(string.format("answered %d\nrefused %d\n", a, r))
end
LUA

good() { wrk -t1 -c4 -d"${PROBE_SECONDS}s" --latency -s "$work/good.lua" "$base/v1/introspect"; }
manage() {
  hey -z "${PROBE_SECONDS}s" -c 2 -q 25 -H "Authorization: Bearer $token" "$base/v1/instances" |
    awk '/ 50% in/ {p50 = $3 * 1000} / 99% in/ {p99 = $3 * 1000} /\[200\]/ {ok = $2} END {printf "%.2f %.2f %d\n", p50, p99, ok}'
}
rps() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '/ 99%/ {print $2}'; }
non200() { awk '/^non-200/ {print $2}'; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo "keyplane flood benchmark: $(nproc) cores, TOKIO_WORKER_THREADS=$WORKERS, flood ~$FLOOD_RATE keys/s for ${FLOOD_SECONDS}s, probes ${PROBE_SECONDS}s"
alone=$(good)
read -r m50_alone m99_alone mok_alone < <(manage)

wrk -t1 -c"$connections" -d"${FLOOD_SECONDS}s" -s "$work/flood.lua" "$base/v1/introspect" >"$work/flood.out" 2>&1 &
flood_pid=$!
sleep 2 # the flood is running before the probes start
under=$(good)
read -r m50_under m99_under mok_under < <(manage)
wait "$flood_pid"

flood_rps=$(rps <"$work/flood.out")
echo "flood       $flood_rps made-up keys/s; looked up and answered $(awk '/^answered/ {print $2}' "$work/flood.out"), refused 429 without a lookup $(awk '/^refused/ {print $2}' "$work/flood.out")"
echo "good key    alone $(rps <<<"$alone") req/s, p99 $(p99 <<<"$alone"); under the flood $(rps <<<"$under") req/s, p99 $(p99 <<<"$under"); throughput ratio $(ratio "$(rps <<<"$under")" "$(rps <<<"$alone")"); non-200 answers alone $(non200 <<<"$alone"), under the flood $(non200 <<<"$under")"
echo "management  GET /v1/instances at 50 req/s: alone p50 ${m50_alone} ms p99 ${m99_alone} ms ($mok_alone ok); under the flood p50 ${m50_under} ms p99 ${m99_under} ms ($mok_under ok); p99 ratio $(ratio "$m99_under" "$m99_alone")"
curl -fsS "$base/metrics" | grep -E '^keyplane_(introspection_cache_lookups_total|db_pool_connections)'
