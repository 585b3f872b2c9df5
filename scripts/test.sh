#!/usr/bin/env bash
# README command (b), and what CI runs: dependencies, format, lints, release build, then every
# test of the workspace (the namespaced ones run the release binaries). Stops at the first
# failing step (the test step runs every test binary, --no-fail-fast); prints a summary either way.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

export ISTHMUS_BIN_DIR="$TARGET_DIR/release"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
TEST_LOG="$TARGET_DIR/test.log"

passed=()
current=""
counts=""

summary() {
    local rc=$?
    echo
    echo "===== scripts/test.sh summary ====="
    local s
    for s in "${passed[@]}"; do
        echo "  ok    $s"
    done
    if [[ $rc -ne 0 ]]; then
        echo "  FAIL  ${current:-setup} (exit $rc)"
    fi
    if [[ -n "$counts" ]]; then
        echo "$counts"
    fi
}
trap summary EXIT

step() {
    current="$1"
    shift
    echo
    echo "==> $current"
    local t0=$SECONDS
    "$@"
    passed+=("$current ($((SECONDS - t0)) s)")
}

# Sums the `test result:` lines of a cargo test log into one line.
count_tests() {
    awk '/^test result:/ { n++; for (i = 2; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i - 1); if ($i ~ /^failed;?$/) f += $(i - 1) } }
         END { if (n) printf "tests: %d passed, %d failed\n", p, f }' "$TEST_LOG"
}

run_tests() {
    mkdir -p "$TARGET_DIR"
    local rc=0
    cargo test --release --workspace --no-fail-fast 2>&1 | tee "$TEST_LOG" || rc=$?
    counts="$(count_tests)"
    return "$rc"
}

step "install dependencies" bash scripts/install-deps.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --release" cargo build --release --workspace --bins
step "cargo test --release" run_tests
current=""
