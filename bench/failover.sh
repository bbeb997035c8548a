#!/bin/sh
# Failover latency over N carrier cuts in the network-namespace harness
# (Tests/OutpostNetworkTests/NamespaceHarness.swift: eth0/wlan0/wwan0, each with its own dnsmasq).
# For each cut: the time from taking eth0's carrier down to the first successful HTTP probe
# through wlan0 via the default route, and to the manager's route change. Prints p50/p99/max.
# Needs root (it creates and deletes its own namespaces), dnsmasq and python3.
#   usage: bench/failover.sh [CUTS] [dhcp|static]   (defaults: 100, dhcp)
set -eu
cuts="${1:-100}"
mode="${2:-dhcp}"
case "$cuts" in ''|*[!0-9]*) echo "usage: $0 [CUTS] [dhcp|static]" >&2; exit 2 ;; esac
case "$mode" in dhcp|static) ;; *) echo "usage: $0 [CUTS] [dhcp|static]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
log="${TMPDIR:-/tmp}/outpost-failover-bench.log"
OUTPOST_BENCH_CUTS="$cuts" OUTPOST_BENCH_CONFIG="$mode" swift test --scratch-path "$PWD/.build-net" \
    --filter 'OutpostNetworkTests.FailoverTests/benchmarkCarrierCuts' >"$log" 2>&1 || true
grep -E '^BENCH|✘' "$log" || true
grep -q '^BENCH' "$log" || { echo "failover bench: no result, see $log" >&2; exit 1; }
! grep -q '✘' "$log"
