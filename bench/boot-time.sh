#!/usr/bin/env bash
# Benchmark: time from QEMU start to `outpost: ready`, phase by phase, against a
# baseline booted in the same run: the same OVMF, the same GRUB and stage-1/
# stage-2 configs, the same Debian kernel and command line, but a busybox
# initramfs that prints the kernel's uptime and powers off at once. Both are
# booted with a TPM (swtpm: the firmware's and GRUB's measurements) and
# without one, alternating, RUNS times each; medians. Phases (bench/boot-phases.py):
# firmware to GRUB's line; GRUB loading and the kernel unpacking itself and the
# initramfs; the kernel to init; then outpostd's own steps up to the ready line.
# Also reports the slot image and outpostd sizes. Needs ./build.sh's outputs in out/.
#
#   bench/boot-time.sh            RUNS=3 (boots per image and TPM setting)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
OUT=${OUTPOST_OUT:-$PWD/out}
BIN=$OUT/bin/outpost
for f in "$BIN" "$OUT/outpost.img" "$OUT/slot.json" "$OUT/efi/EFI/BOOT/grub.cfg"; do
    [ -e "$f" ] || { echo "bench: $f is missing; run ./build.sh first" >&2; exit 1; }
done
RUNS=${RUNS:-3}
W=$(mktemp -d /var/tmp/outpost-boot-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

# The baseline slot: same kernel and command line (slot build writes both), busybox initramfs, an empty root.
kernel=$(ls /var/cache/outpost/kernels/*/boot/vmlinuz-* | head -1)
mkdir -p "$W/initrd/bin" "$W/root"
cp /bin/busybox "$W/initrd/bin/busybox"
cat > "$W/initrd/init" <<'SH'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null || { /bin/busybox mkdir -p /proc; /bin/busybox mount -t proc proc /proc; }
/bin/busybox echo "baseline: up $(/bin/busybox cat /proc/uptime)"
/bin/busybox poweroff -f
SH
chmod +x "$W/initrd/init"
(cd "$W/initrd" && find . | cpio -o -H newc --quiet | gzip -9) > "$W/baseline-initrd.img"
"$BIN" slot build --quiet --kernel "$kernel" --initramfs "$W/baseline-initrd.img" --root-dir "$W/root" \
    --image-version baseline --output "$W/baseline-slot.img"
"$BIN" image build --quiet --config "$OUT/dev-config" --slot "$W/baseline-slot.img" --efi "$OUT/efi" \
    --output "$W/baseline.img"
cp --sparse=always "$OUT/outpost.img" "$W/outpost.img"
# The first boot grows PERSIST and enrols the vault in this TPM; not timed.
"$BIN" run --headless --timeout 300 --tpm-state "$W/tpm" "$W/outpost.img" >/dev/null
"$BIN" run --headless --timeout 300 --tpm-state "$W/tpm-baseline" "$W/baseline.img" --until "baseline: up" >/dev/null

# boot IMAGE MARKER UNTIL tpm|none → one JSON line (bench/boot-phases.py) appended to $W/runs.jsonl
boot() {
    local tpm=(--tpm-state "$W/tpm")
    [ "$4" = none ] && tpm=(--no-tpm)
    [ "$1" = "$W/baseline.img" ] && [ "$4" = tpm ] && tpm=(--tpm-state "$W/tpm-baseline")
    python3 bench/boot-phases.py "$2" "$BIN" run --headless --snapshot --timeout 300 --until "$3" "${tpm[@]}" "$1" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); d["image"]=sys.argv[1]; d["tpm"]=sys.argv[2]; print(json.dumps(d))' \
            "$(basename "$1" .img)" "$4" >> "$W/runs.jsonl"
}
for i in $(seq "$RUNS"); do
    for tpm in tpm none; do
        boot "$W/baseline.img" "baseline: up" "baseline: up" "$tpm"
        boot "$W/outpost.img" "outpost: ready" "outpost: boot: " "$tpm"
    done
    echo "bench: round $i of $RUNS done" >&2
done

python3 - "$W/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def median(xs): return statistics.median(xs) if xs else float("nan")
ok = True
for tpm in ("tpm", "none"):
    base = [r for r in runs if r["image"] == "baseline" and r["tpm"] == tpm]
    out = [r for r in runs if r["image"] == "outpost" and r["tpm"] == tpm]
    b = median([r["toMarker"] for r in base if r["toMarker"]])
    o = median([r["toMarker"] for r in out if r["toMarker"]])
    print(f"\n{'with a TPM (swtpm)' if tpm == 'tpm' else 'without a TPM'}: medians of {len(out)} boots each")
    names = list(dict.fromkeys([k for r in base + out for k in r["phases"]]))
    print(f"  {'phase':52} {'baseline':>9} {'outpost':>9}")
    for name in names:
        bv = median([r["phases"][name] for r in base if r["phases"].get(name) is not None])
        ov = median([r["phases"][name] for r in out if r["phases"].get(name) is not None])
        fmt = lambda v: "-" if v != v else f"{v:7.2f} s"
        print(f"  {name:52} {fmt(bv):>9} {fmt(ov):>9}")
    print(f"  {'QEMU start to the marker (baseline: up / outpost: ready)':52} {b:7.2f} s {o:7.2f} s")
    ratio = o / b
    ok = ok and ratio <= 1.1
    print(f"  ratio outpost / baseline: {ratio:.2f}x (goal <= 1.1x)   runs: outpost {[round(r['toMarker'], 1) for r in out]} baseline {[round(r['toMarker'], 1) for r in base]}")
print("\ngoal (<= 1.1x with and without a TPM):", "met" if ok else "MISSED")
PY
echo "slot image size:                        $(( $(stat -c %s "$OUT/slot.img") >> 20 )) MiB ($(stat -c %s "$OUT/slot.img") bytes; goal <= 150 MB)"
echo "outpostd binary:                        $(stat -c %s "$OUT/bin/outpostd") bytes ($(strip -o "$W/outpostd.stripped" "$OUT/bin/outpostd" && stat -c %s "$W/outpostd.stripped") stripped)"
