#!/usr/bin/env bash
# Is this tree's introspection slower than another revision's? Builds the
# revision in a worktree of its own (its own target directory), then runs
# bench/introspect.sh from each tree in turn, ROUNDS times, so both see the
# same machine at the same moments. Each run's figures are already ratios
# against /healthz measured in that run; this compares those ratios.
#
#   bench/compare.sh 3ac8ab0            # 2 rounds, 10 s per measurement
#   ROUNDS=3 DURATION=20 bench/compare.sh main~5
set -euo pipefail
cd "$(dirname "$0")/.."

base_rev=${1:?usage: bench/compare.sh REVISION}
ROUNDS=${ROUNDS:-2}
export DURATION=${DURATION:-10} ROUNDS_PROPAGATION=${ROUNDS_PROPAGATION:-50}

here=$(pwd)
base_dir="$here/target/compare/$(git rev-parse --short "$base_rev")"
if [ ! -d "$base_dir" ]; then
  git worktree add --detach "$base_dir" "$base_rev" >/dev/null
fi
results=$(mktemp)
log=$(mktemp)
trap 'rm -f "$results" "$log"' EXIT

# run TREE LABEL: one benchmark from TREE, its three ratios noted under LABEL.
run() {
  local tree=$1 label=$2 out
  out=$(cd "$tree" && ROUNDS=$ROUNDS_PROPAGATION CARGO_TARGET_DIR="$tree/target" bench/introspect.sh 2>"$log") ||
    { cat "$log" >&2; echo "bench/introspect.sh failed in $tree" >&2; exit 1; }
  printf '%s\n' "$out" | sed "s/^/[$label] /" >&2
  python3 - "$label" "$out" >>"$results" <<'PY'
import re, sys
label, out = sys.argv[1], sys.argv[2]
def find(pattern):
    m = re.search(pattern, out)
    return m.group(1) if m else "nan"
print(label,
      find(r"throughput .*ratio ([0-9.]+)"),
      find(r"latency .*p99 ratio ([0-9.]+)"),
      find(r"uncached .*ratio ([0-9.]+)"))
PY
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  run "$base_dir" base
  run "$here" this
done

python3 - "$results" "$base_rev" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def mean(label, column):
    values = [float(r[column]) for r in rows if r[0] == label and r[column] != "nan"]
    return statistics.mean(values) if values else float("nan")
print(f"compared with {sys.argv[2]}, {sum(r[0] == 'this' for r in rows)} runs each, means of per-run ratios:")
for name, column, better in [("cached introspection / healthz throughput", 1, "higher"),
                             ("cached introspection / healthz p99", 2, "lower"),
                             ("uncached introspection / pgbench throughput", 3, "higher")]:
    base, this = mean("base", column), mean("this", column)
    print(f"  {name}: base {base:.2f}, this {this:.2f}; this/base {this / base:.2f} ({better} is better)")
PY
