#!/usr/bin/env bash
# Benchmark: time to assemble a 1 GiB image from prepared inputs, against a
# sparse `cp` of an image of the same size, both measured in this run.
# Prints the medians of 3 runs each and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin SOURCE_DATE_EPOCH=1700000000
swift build -c release --product outpost >/dev/null
BIN=$(swift build -c release --product outpost --show-bin-path)/outpost
W=$(mktemp -d /var/tmp/outpost-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
scripts/dev-config.sh "$W/config"
head -c $((200 << 20)) /dev/urandom > "$W/slot.img"          # a 200 MiB slot payload
mkdir -p "$W/efi/EFI/BOOT" && head -c $((4 << 20)) /dev/urandom > "$W/efi/EFI/BOOT/BOOTX64.EFI"

now() { date +%s.%N; }
median() { sort -n | sed -n 2p; }
build_times=() cp_times=()
for i in 1 2 3; do
    t0=$(now)
    "$BIN" image build --quiet --layout partitions/layout.json --config "$W/config" --slot "$W/slot.img" \
        --efi "$W/efi" --output "$W/disk.img"
    t1=$(now)
    sync
    t2=$(now)
    cp --sparse=always "$W/disk.img" "$W/copy.img"
    t3=$(now)
    rm -f "$W/copy.img"
    build_times+=("$(awk "BEGIN{print $t1 - $t0}")") cp_times+=("$(awk "BEGIN{print $t3 - $t2}")")
done
b=$(printf '%s\n' "${build_times[@]}" | median)
c=$(printf '%s\n' "${cp_times[@]}" | median)
size=$(stat -c %s "$W/disk.img")
echo "image size:            $((size >> 20)) MiB (allocated $(du -m "$W/disk.img" | cut -f1) MiB)"
echo "outpost image build:   ${b}s (median of 3)"
echo "cp --sparse=always:    ${c}s (median of 3)"
echo "ratio build / cp:      $(awk "BEGIN{printf \"%.2f\", $b / $c}")x"
