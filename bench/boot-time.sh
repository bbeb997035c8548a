#!/usr/bin/env bash
# Benchmark: time from QEMU start to `outpost: ready`, against a baseline
# booted in the same run: the same OVMF, the same GRUB and stage-1/stage-2
# configs, the same Debian kernel, but a busybox initramfs that prints a
# marker and powers off at once. Also reports the slot image size and the
# outpostd binary size. Needs ./build.sh's outputs in out/.
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

# The baseline slot: same kernel, busybox initramfs, an empty root.
kernel=$(ls /var/cache/outpost/kernels/*/boot/vmlinuz-* | head -1)
mkdir -p "$W/initrd/bin" "$W/root"
cp /bin/busybox "$W/initrd/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox echo "baseline: up"\n/bin/busybox poweroff -f\n' > "$W/initrd/init"
chmod +x "$W/initrd/init"
(cd "$W/initrd" && find . | cpio -o -H newc --quiet | gzip -9) > "$W/baseline-initrd.img"
"$BIN" slot build --quiet --kernel "$kernel" --initramfs "$W/baseline-initrd.img" --root-dir "$W/root" \
    --image-version baseline --output "$W/baseline-slot.img"
"$BIN" image build --quiet --config "$OUT/dev-config" --slot "$W/baseline-slot.img" --efi "$OUT/efi" \
    --output "$W/baseline.img"
cp --sparse=always "$OUT/outpost.img" "$W/outpost.img"
"$BIN" run --headless --timeout 300 "$W/outpost.img" >/dev/null   # first boot grows PERSIST; not timed

now() { date +%s.%N; }
time_boot() {  # image marker
    local t0 t1
    t0=$(now)
    "$BIN" run --headless --snapshot --timeout 300 --until "$2" "$1" >/dev/null
    t1=$(now)
    awk "BEGIN{print $t1 - $t0}"
}
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
outpost_t=() base_t=()
for i in $(seq "$RUNS"); do
    base_t+=("$(time_boot "$W/baseline.img" "baseline: up")")
    outpost_t+=("$(time_boot "$W/outpost.img" "outpost: ready")")
done
b=$(printf '%s\n' "${base_t[@]}" | median)
o=$(printf '%s\n' "${outpost_t[@]}" | median)
echo "baseline (busybox initramfs, poweroff): ${b}s   runs: ${base_t[*]}"
echo "outpost to ready line:                  ${o}s   runs: ${outpost_t[*]}"
echo "ratio outpost / baseline:               $(awk "BEGIN{printf \"%.2f\", $o / $b}")x (goal <= 1.5x)"
echo "slot image size:                        $(( $(stat -c %s "$OUT/slot.img") >> 20 )) MiB ($(stat -c %s "$OUT/slot.img") bytes; goal <= 150 MB)"
echo "outpostd binary:                        $(stat -c %s "$OUT/bin/outpostd") bytes ($(strip -o "$W/outpostd.stripped" "$OUT/bin/outpostd" && stat -c %s "$W/outpostd.stripped") stripped)"
