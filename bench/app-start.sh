#!/usr/bin/env bash
# App start: from the apps config arriving to the boot-counter app `running`, through the
# agent's own path (AppService: download from a local Range server, sha256, qcow2 overlay,
# memory admission, QEMU under the runner, first console line; stepped every 500 ms as outpostd
# does), against the very same QEMU command line started by hand to its first console line, in
# the same run. Also QEMU's RSS once running against the app's 64 MiB and the modelled limit.
# Single-level TCG on this host; inside the device (nested TCG) everything is 10-25x slower.
#
#   bench/app-start.sh [RUNS]      (default 3; the median is reported)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SCRATCH=(${OUTPOST_SCRATCH:+--scratch-path "$OUTPOST_SCRATCH"})
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is missing: run ./build.sh (it installs qemu-system-x86)" >&2; exit 1; }
echo "==> building the tests" >&2
swift build "${SCRATCH[@]}" --build-tests >&2
OUTPOST_BENCH_APP_START_RUNS=$RUNS swift test "${SCRATCH[@]}" --skip-build --filter AppStartBenchmark 2>&1 \
    | grep -E "^app-start:|✘|error" || { echo "the benchmark printed no result" >&2; exit 1; }
