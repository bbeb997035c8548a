#!/usr/bin/env bash
# App instance disks: creating one from a base image of SIZE MiB (default 1024, every block
# written) as a qcow2 overlay (InstanceDisk, what outpostd does) against a full private copy
# (qemu-img convert, what the seed system does per instance), median of three each, in the
# same run on the same disk, both synced. Prints the times, the bytes each uses and the ratios.
#
#   bench/app-volume.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
SCRATCH=(${OUTPOST_SCRATCH:+--scratch-path "$OUTPOST_SCRATCH"})
command -v qemu-img >/dev/null || { echo "qemu-img is missing: run ./build.sh (it installs qemu-utils)" >&2; exit 1; }
echo "==> building the tests" >&2
swift build "${SCRATCH[@]}" --build-tests >&2
OUTPOST_BENCH_APP_VOLUME_MIB=$MIB swift test "${SCRATCH[@]}" --skip-build --filter VolumeBenchmark 2>&1 \
    | grep -E "^app-volume:|✘|error" || { echo "the benchmark printed no result" >&2; exit 1; }
