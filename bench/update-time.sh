#!/usr/bin/env bash
# Benchmark: wall time of an over-the-air update in QEMU, from the agent
# starting the install (console "update: installing") to "update: committed",
# minus the 5 s test window: verify, write, read-back, orderly restart, GRUB,
# kernel, verity root, agent start, commit. Runs the QEMU update test, which
# needs ./build.sh's outputs in out/ (run ./build.sh first).
#   bench/update-time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${SCRATCH:-.build}
swift build --scratch-path "$SCRATCH" --build-tests >/dev/null
log=$(mktemp /tmp/outpost-update-time.XXXXXX)
swift test --scratch-path "$SCRATCH" --skip-build --filter 'OutpostSystemTests.QEMU/UpdateTests' >"$log" 2>&1 || {
    echo "update-time: the QEMU update test failed; see $log" >&2; exit 1; }
grep '^BENCH' "$log" || { echo "update-time: no figure in $log" >&2; exit 1; }
