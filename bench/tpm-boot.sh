#!/usr/bin/env bash
# Benchmark (issue 13): what the TPM identity costs a managed device's first
# boot. One run, alternating: the same image booted with a new swtpm (the key
# is made in the TPM, every TLS handshake signs in it) and with no TPM (the
# file identity), each from a fresh copy, timing from QEMU's start to
# `outpost: ready` and to `fleet: registered with` (a local controller on the
# host's loopback). Prints the medians and the ratios TPM / no TPM.
# Needs ./build.sh test-inputs' outputs in out/ (outpost, outpost-controller).
#
#   bench/tpm-boot.sh            RUNS=2 (boots per variant)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUTPOST_OUT:-$PWD/out}
BIN=$OUT/bin/outpost
CTL=$OUT/bin/outpost-controller
for f in "$BIN" "$CTL" "$OUT/slot.img" "$OUT/efi/EFI/BOOT/grub.cfg"; do
    [ -e "$f" ] || { echo "bench: $f is missing; run ./build.sh test-inputs first" >&2; exit 1; }
done
RUNS=${RUNS:-2}
W=$(mktemp -d /var/tmp/outpost-tpm-bench.XXXXXX)
CTL_PID=
cleanup() {
    [ -n "$CTL_PID" ] && kill -TERM "$CTL_PID" 2>/dev/null && wait "$CTL_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$CTL" init "$W/fleet" --host 10.0.2.2 --port "$PORT" --trust "$OUT/keys" >/dev/null
"$BIN" image build --quiet --config "$W/fleet/config" --slot "$OUT/slot.img" --efi "$OUT/efi" --output "$W/managed.img"
"$CTL" serve --data "$W/fleet" --listen "127.0.0.1:$PORT" --log-level warning &
CTL_PID=$!
for _ in $(seq 1 300); do [ -S "$W/fleet/admin.sock" ] && break; sleep 0.1; done
[ -S "$W/fleet/admin.sock" ] || { echo "bench: the controller did not start" >&2; exit 1; }

# boot NAME tpm|none: prints "ready_seconds registered_seconds identity-line".
boot() {
    local name=$1 tpm=(--tpm-state "$W/$1.tpm")
    [ "$2" = none ] && tpm=(--no-tpm)
    cp --sparse=always "$W/managed.img" "$W/$name.img"
    "$BIN" run --headless --timeout 400 --until "fleet: registered with" "${tpm[@]}" "$W/$name.img" \
        | python3 -c '
import sys, time
t0 = time.monotonic(); ready = registered = None; identity = "-"
for line in sys.stdin:
    t = time.monotonic() - t0
    if ready is None and "outpost: ready" in line: ready = t
    if "fleet: identity:" in line: identity = line.strip().split("fleet: identity: ", 1)[1]
    if registered is None and "fleet: registered with" in line: registered = t
if ready is None or registered is None: sys.exit("bench: no ready or registered line")
print(f"{ready:.1f} {registered:.1f} {identity}")'
    rm -rf "$W/$name.img" "$W/$name.tpm"
}

tpm_ready=() tpm_reg=() file_ready=() file_reg=()
for i in $(seq "$RUNS"); do
    read -r r g id < <(boot "tpm-$i" tpm)
    tpm_ready+=("$r"); tpm_reg+=("$g"); echo "run $i, TPM:    ready ${r}s, registered ${g}s ($id)" >&2
    read -r r g id < <(boot "file-$i" none)
    file_ready+=("$r"); file_reg+=("$g"); echo "run $i, no TPM: ready ${r}s, registered ${g}s ($id)" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
tr=$(median "${tpm_ready[@]}"); tg=$(median "${tpm_reg[@]}"); fr=$(median "${file_ready[@]}"); fg=$(median "${file_reg[@]}")
echo "first boot to ready:       TPM ${tr}s, no TPM ${fr}s, ratio $(awk "BEGIN{printf \"%.2f\", $tr / $fr}")x"
echo "first boot to registered:  TPM ${tg}s, no TPM ${fg}s, ratio $(awk "BEGIN{printf \"%.2f\", $tg / $fg}")x"
