#!/usr/bin/env bash
# The request-path micro-benchmarks (`cargo bench --bench answer`) of an older commit and of the
# working tree, built side by side and run alternately in one session, so that both see the
# same machine noise. Prints each benchmark's median estimate per build and the ratio.
#
#   benches/compare.sh [REV] [FILTER]     REV default: HEAD; FILTER default: answer/
#
# Environment: ROUNDS [3] (each round runs the old binary, then the new one), TIME [2]
# (seconds of measurement per benchmark), OLD_TREE (a checkout of REV to build in instead of a
# new temporary worktree: later runs then rebuild only what changed).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REV="${1:-HEAD}"
FILTER="${2:-answer/}"
ROUNDS="${ROUNDS:-3}"
TIME="${TIME:-2}"
work="$(mktemp -d)"
old_tree="${OLD_TREE:-$work/old}"
cleanup() {
    [ -n "${OLD_TREE:-}" ] || git -C "$ROOT" worktree remove --force "$work/old" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# The bench binary of a source tree, built into its own target directory.
bench_binary() {
    local tree="$1" target="$2"
    (cd "$tree" && CARGO_TARGET_DIR="$target" cargo bench --locked --bench answer --no-run \
        --message-format=json 2>/dev/null) |
        /usr/bin/python3 -c 'import json,sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "answer" and m.get("executable"):
        print(m["executable"])'
}

[ -n "${OLD_TREE:-}" ] || git -C "$ROOT" worktree add --detach --quiet "$work/old" "$REV"
echo "compare.sh: building the bench binary of $REV ($old_tree) and of the working tree" >&2
old_bin="$(bench_binary "$old_tree" "$ROOT/target/compare-old")"
new_bin="$(bench_binary "$ROOT" "$ROOT/target")"
[ -x "$old_bin" ] && [ -x "$new_bin" ] || { echo "compare.sh: a bench binary did not build" >&2; exit 1; }

# name -> estimate in ns, one line per benchmark, from criterion's "time: [lo est hi]" lines.
run() {
    local bin="$1" tree="$2"
    (cd "$tree" && "$bin" --bench "$FILTER" --noplot --warm-up-time 1 --measurement-time "$TIME" 2>/dev/null) |
        /usr/bin/python3 -c 'import re,sys
unit = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
name = None
for line in sys.stdin:
    m = re.match(r"^(\S+)\s*(time:.*)?$", line.rstrip())
    if m and not line.startswith(" "):
        name = m.group(1)
    t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+)", line)
    if t and name:
        print(name, float(t.group(1)) * unit[t.group(2)])
        name = None'
}

results="$work/results"
for round in $(seq 1 "$ROUNDS"); do
    echo "compare.sh: round $round of $ROUNDS" >&2
    run "$old_bin" "$old_tree" | sed "s/^/old /" >>"$results"
    run "$new_bin" "$ROOT" | sed "s/^/new /" >>"$results"
done

/usr/bin/python3 - "$results" "$REV" <<'EOF'
import statistics, sys
from collections import defaultdict
runs = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    build, name, ns = line.split()
    runs[name][build].append(float(ns))
print(f"{'benchmark':<34} {'old (' + sys.argv[2][:10] + ')':>16} {'new':>12} {'new/old':>8}   per-round ns")
for name in sorted(runs):
    old, new = runs[name]["old"], runs[name]["new"]
    if not old or not new:
        continue
    o, n = statistics.median(old), statistics.median(new)
    rounds = " ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(old, new))
    print(f"{name:<34} {o:>13.1f} ns {n:>9.1f} ns {n / o:>8.3f}   {rounds}")
EOF
