#!/usr/bin/env bash
# The controller's cost of one attestation: quotes verified per second on one
# core (QuoteVerifier: parse, ECDSA P-256 over SHA-256, nonce, PCR digest, PCR
# expectations), next to a bare ECDSA P-256 verify measured in the same run.
# Pinned to one CPU with taskset. Builds only the attestation-bench product,
# in release mode unless BUILD=debug (debug compiles BoringSSL without
# optimisation: the ratio holds, the absolute figures do not).
#
#   bench/attestation-verify.sh [SECONDS per measurement, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${BUILD:-release}
swift build -c "$CONFIG" --product attestation-bench >&2
BIN=$(swift build -c "$CONFIG" --show-bin-path)/attestation-bench
echo "attestation-verify: $CONFIG build, one core (CPU 0), $(uname -m)"
taskset -c 0 "$BIN" "${1:-3}"
