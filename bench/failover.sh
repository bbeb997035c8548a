#!/bin/sh
# Failover latency over N carrier cuts in the network-namespace harness
# (Tests/OutpostNetworkTests/NamespaceHarness.swift): for each cut, the time from taking
# eth0's carrier down to the first successful HTTP probe through wlan0 via the default route.
# Prints p50/p99/max. Needs root (it creates and deletes its own namespaces).
#   usage: bench/failover.sh [CUTS]   (default 100)
set -eu
cuts="${1:-100}"
case "$cuts" in ''|*[!0-9]*) echo "usage: $0 [CUTS]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
OUTPOST_BENCH_CUTS="$cuts" swift test --scratch-path "$PWD/.build-net" \
    --filter 'OutpostNetworkTests.FailoverTests/benchmarkCarrierCuts' 2>&1 | tee /tmp/outpost-failover-bench.log | grep -E '^BENCH|✘|error:' || true
grep -q '^BENCH' /tmp/outpost-failover-bench.log || { echo "failover bench: no result, see /tmp/outpost-failover-bench.log" >&2; exit 1; }
! grep -q '✘' /tmp/outpost-failover-bench.log
