#!/usr/bin/env bash
# Runs every fuzz target for a bounded time with cargo-fuzz (libFuzzer), starting from the
# committed seed corpus in fuzz/corpus/<target>/.
#
#   fuzz/run.sh                 # each target 60 s
#   FUZZ_SECONDS=3600 fuzz/run.sh request   # one target, longer, by hand
#
# cargo-fuzz needs a nightly toolchain (-Zsanitizer) and the cargo-fuzz subcommand. Where
# either is missing this script says which and exits 0 without fuzzing: the stable smoke fuzz
# in tests/it/hostile.rs (`cargo test --profile ci --test it hostile::`) runs the same checks on
# seeded random inputs in every CI run. New corpus entries go to a temporary directory, so a
# bounded run never rewrites the committed seeds; crashes land in fuzz/artifacts/<target>/ and
# make the script exit 1. A crash found is fixed and its input kept as a regression test.
#
# The seeds of `request` are real queries, captured from dig and kdig (EDNS, DO, cookies,
# NSID, client subnet, padding, no EDNS, class CH, AXFR over UDP...); the others are the example
# consortium's files and a few small zones and members files that use most of the syntax.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-60}"
all_targets=(request zone_parse members_parse snapshot transfer config_parse)
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

skip() {
    echo "fuzz: SKIPPED, $1"
    echo "fuzz: the stable smoke fuzz in tests/it/hostile.rs covers the same invariants meanwhile"
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
# `cargo +nightly` works only through rustup; a nightly cargo first on PATH works too.
if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
elif cargo --version 2>/dev/null | grep -q -- '-nightly'; then
    cargo=(cargo)
else
    skip "no nightly Rust toolchain (cargo-fuzz needs -Zsanitizer; install one with: rustup toolchain install nightly)"
fi
"${cargo[@]}" fuzz --version >/dev/null 2>&1 \
    || skip "cargo-fuzz is not installed (install it with: cargo install cargo-fuzz)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "$work/$target"
    # -rss_limit_mb: a zone text may legitimately build a large snapshot, not an unbounded one.
    if ! "${cargo[@]}" fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: ${#targets[@]} target(s) ran ${seconds}s each without a crash"
