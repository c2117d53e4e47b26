#!/usr/bin/env bash
# keyplane losing machines, on the deployment deploy/ha/ describes: etcd,
# two Patroni nodes (primary and synchronous standby) and HAProxy, with
# three keyplane replicas and gates on top; faults injected into the real
# processes (tests/ha/faults.py prints what each cost). Installs Debian's
# patroni, etcd-server, haproxy and openssl (for the gates' certificate)
# where they are missing; runs as root (PostgreSQL itself runs as the
# postgres user). Expects the debug binaries built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

missing=()
command -v patroni >/dev/null 2>&1 || missing+=(patroni)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "${0##*/}: installing ${missing[*]} from Debian's packages" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres

export KEYPLANE_BIN="${KEYPLANE_BIN:-$root/target/debug/keyplane}"
export KEYPLANE_GATE_BIN="${KEYPLANE_GATE_BIN:-$root/target/debug/keyplane-gate}"
export KEYPLANE_PG_BIN="${KEYPLANE_PG_BIN:-/usr/lib/postgresql/15/bin}"
# Bounded as a whole, whatever hangs.
timeout 600 python3 "$here/faults.py"
