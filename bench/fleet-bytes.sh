#!/bin/sh
# Bytes on the wire per device-hour between one device client (OutpostFleet, the code outpostd
# runs) and the reference controller, with no config change, counted by a TCP relay between
# them. The client runs its intervals divided by SCALE, so SECONDS of it stand for
# SECONDS x SCALE of a device's life at the default cadence (config and metrics 60 s, info
# 600 s, logs 30 s). Baseline: one 304 config poll on a fresh mutual-TLS connection, same run.
#   usage: bench/fleet-bytes.sh [SECONDS] [SCALE]   (defaults: 120, 30 = one device-hour)
set -eu
seconds="${1:-120}"
scale="${2:-30}"
case "$seconds$scale" in *[!0-9]*|'') echo "usage: $0 [SECONDS] [SCALE]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
log="${TMPDIR:-/tmp}/outpost-fleet-bytes.log"
swift build --build-tests >&2
OUTPOST_BENCH_FLEET_SECONDS="$seconds" OUTPOST_BENCH_FLEET_SCALE="$scale" swift test --skip-build \
    --filter 'OutpostFleetTests.WireBytesBenchmark' >"$log" 2>&1 || true
grep -E '^fleet bytes|✘' "$log" || true
grep -q '^fleet bytes' "$log" || { echo "fleet-bytes bench: no result, see $log" >&2; exit 1; }
! grep -q '✘' "$log"
