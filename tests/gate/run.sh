#!/usr/bin/env bash
# Drives keyplane-gate end to end with the official `openai` Python package:
# the client talks to the gate, which checks keys with a real keyplane and
# forwards to a small OpenAI-compatible upstream the suite runs in-process.
# Each keyplane gets a fresh database on the server named by
# KEYPLANE_TEST_DATABASE_URL (scripts/test starts it and sets that and
# KEYPLANE_PG_BIN). Extra arguments go to pytest (e.g. `-k revoked -x`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${KEYPLANE_TEST_DATABASE_URL:?run through scripts/test, which starts PostgreSQL}"
: "${KEYPLANE_PG_BIN:?run through scripts/test, which starts PostgreSQL}"

export KEYPLANE_BIN="${KEYPLANE_BIN:-$root/target/debug/keyplane}"
export KEYPLANE_GATE_BIN="${KEYPLANE_GATE_BIN:-$root/target/debug/keyplane-gate}"
for bin in "$KEYPLANE_BIN" "$KEYPLANE_GATE_BIN"; do
  [ -x "$bin" ] || { echo "${0##*/}: $bin is missing; build it first (cargo build --workspace)" >&2; exit 1; }
done

venv="${KEYPLANE_GATE_VENV:-$root/target/gate-venv}"
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi

# The suite creates its databases under this prefix and drops them as it
# goes; whatever a crash left behind is dropped here.
export KEYPLANE_GATE_DB_PREFIX="keyplane_gate_$$"
psql=("$KEYPLANE_PG_BIN/psql" "$KEYPLANE_TEST_DATABASE_URL" -qAt)
cleanup() {
  local name
  for name in $("${psql[@]}" -c "select datname from pg_database where datname like '${KEYPLANE_GATE_DB_PREFIX}\\_%'" 2>/dev/null); do
    "${psql[@]}" -c "drop database if exists $name with (force)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

cd "$here"
"$venv/bin/pytest" -q -p no:cacheprovider "$here" "$@"
