#!/usr/bin/env bash
# How fast a label selector answers over a large fleet: 100,000 instances
# (one key each) with env, team and tier labels, then GET /v1/instances and
# GET /v1/keys with selectors from the most selective to one no index helps.
# Every figure is a median of ROUNDS requests and a ratio against GET
# /healthz measured in the same run (shared machines are noisy).
#
#   bench/selectors.sh                       # release build, 100,000 instances
#   PROFILE=debug INSTANCES=20000 bench/selectors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/postgres.sh

PROFILE=${PROFILE:-release}
INSTANCES=${INSTANCES:-100000}
ROUNDS=${ROUNDS:-50}

if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p keyplane-server >&2
else
  cargo build --locked -p keyplane-server >&2
fi
bin=target/$PROFILE/keyplane
start_postgres
"$KEYPLANE_PG_BIN/createdb" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres selectors
database_url="${KEYPLANE_TEST_DATABASE_URL%/*}/selectors"
psql=("$KEYPLANE_PG_BIN/psql" -h 127.0.0.1 -p "$KEYPLANE_PG_PORT" -U postgres -d selectors -qAt)
token="bench-bootstrap-token-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
  stop_postgres
}
trap cleanup EXIT

DATABASE_URL="$database_url" "$bin" migrate >&2
# The fleet, written directly: 3 environments, 50 teams, 2 tiers.
"${psql[@]}" <<SQL
insert into instances (id, name, labels, allowed_scopes, created_at, updated_at)
select gen_random_uuid(), 'jan-' || n,
       jsonb_build_object('env', (array['prod','dev','staging'])[1 + n % 3],
                          'team', 't' || (n % 50),
                          'tier', (array['gpu','cpu'])[1 + n % 2]),
       '{inference:chat}', now() - (n || ' seconds')::interval, now()
  from generate_series(1, $INSTANCES) as n;
insert into api_keys (id, instance_id, name, digest, masked, scopes, created_at, expires_at)
select gen_random_uuid(), id, 'k', sha256(id::text::bytea), 'kpi_…0000', '{inference:chat}',
       created_at, now() + interval '30 days'
  from instances;
analyze instances;
analyze api_keys;
SQL

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL="$database_url" KEYPLANE_LISTEN="127.0.0.1:$port" KEYPLANE_BOOTSTRAP_TOKEN="$token" \
  KEYPLANE_MASTER_KEY="$(head -c 32 /dev/urandom | base64)" KEYPLANE_RATE_OPERATOR=1000000 \
  RUST_LOG=warn "$bin" serve >"$work/keyplane.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

# median PATH: the median seconds of ROUNDS GETs of PATH (after one warm-up).
median() {
  local url="http://127.0.0.1:$port$1"
  curl -fsS -o /dev/null -H "Authorization: Bearer $token" "$url"
  for _ in $(seq 1 "$ROUNDS"); do
    curl -fsS -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $token" "$url"
  done | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

baseline=$(median /healthz)
printf '%-58s %10s %8s\n' "request ($INSTANCES instances, $PROFILE)" "median ms" "ratio"
row() { awk -v name="$1" -v t="$2" -v b="$baseline" 'BEGIN { printf "%-58s %10.2f %8.1f\n", name, t * 1000, t / b }'; }
row "GET /healthz (baseline)" "$baseline"
for query in \
  "/v1/instances?limit=50" \
  "/v1/instances?limit=50&selector=team%3Dt7%2Cenv%3Dprod" \
  "/v1/instances?limit=50&selector=env%3Dprod" \
  "/v1/instances?limit=50&selector=tier%20in%20(gpu)%2Cteam!%3Dt1" \
  "/v1/instances?limit=50&selector=team%3Dt7%2Cenv%3Dnowhere" \
  "/v1/instances?limit=50&selector=!tier" \
  "/v1/keys?limit=50&selector=team%3Dt7%2Cenv%3Dprod" \
  "/v1/keys?limit=50&selector=env%3Dprod"; do
  row "GET $query" "$(median "$query")"
done
