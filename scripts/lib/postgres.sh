# Sourced by scripts/test and bench/*: a throwaway PostgreSQL cluster.
#
#   start_postgres   installs the server from Debian's packages if missing,
#                    starts a cluster in a temporary directory on a free
#                    loopback port, with TLS (ssl=on, a certificate for
#                    127.0.0.1 signed by a throwaway CA), and exports
#                    KEYPLANE_TEST_DATABASE_URL (its admin URL),
#                    KEYPLANE_TEST_PG_CA (that CA) and KEYPLANE_PG_BIN;
#   stop_postgres    stops it and removes its files (start_postgres arranges
#                    for this to run on exit).

pg_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

newest_pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && printf '%s\n' "$dir"
  done | sort -V | tail -n 1
}

start_postgres() {
  pg_bin=${KEYPLANE_PG_BIN:-$(newest_pg_bin)}
  if [ -z "$pg_bin" ]; then
    pg_log "no PostgreSQL server found; installing it from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    pg_bin=$(newest_pg_bin)
  fi

  pg_scratch=$(mktemp -d /tmp/keyplane-pg.XXXXXX)
  as_pg=()
  if [ "$(id -u)" = 0 ]; then
    # initdb and postgres refuse to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chown postgres "$pg_scratch"
    as_pg=(runuser -u postgres --)
  fi
  trap stop_postgres EXIT

  # TLS, as production runs it: a CA and a certificate for 127.0.0.1.
  command -v openssl >/dev/null || {
    pg_log "openssl is missing; installing it from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  }
  local tls=$pg_scratch/tls
  mkdir -p "$tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=keyplane-test-ca -keyout "$tls/ca-key.pem" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$tls/server-key.pem" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/san.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$tls/san.ext" -out "$tls/server.pem" 2>/dev/null
  chmod 600 "$tls/server-key.pem"
  [ "$(id -u)" = 0 ] && chown -R postgres "$tls"

  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_scratch/data" -U postgres -A trust --no-sync \
    >"$pg_scratch/initdb.log" 2>&1 || { cat "$pg_scratch/initdb.log" >&2; return 1; }

  local started= port
  for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    if "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_scratch/data" -l "$pg_scratch/postgres.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_scratch -c fsync=off -c synchronous_commit=off -c max_connections=400 -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server-key.pem ${KEYPLANE_PG_OPTIONS:-}" \
        start >/dev/null; then
      started=1
      break
    fi
  done
  if [ -z "$started" ]; then
    pg_log "PostgreSQL did not start:"
    cat "$pg_scratch/postgres.log" >&2
    return 1
  fi
  pg_log "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
  export KEYPLANE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export KEYPLANE_TEST_PG_CA=$tls/ca.pem
  export KEYPLANE_PG_BIN=$pg_bin
  export KEYPLANE_PG_PORT=$port
}

stop_postgres() {
  [ -n "${pg_scratch:-}" ] || return 0
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_scratch/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pg_scratch"
  pg_scratch=
}
