#!/usr/bin/env bash
# Benchmark: slot write throughput of the update engine (`outpost bundle
# install`, release build: UpdateEngine.install against a GPT disk image file:
# verify pass, write+hash pass with fsync, read-back after dropping the page
# cache, GPT update) against
# `dd oflag=direct conv=fsync` of the same payload to a file of the same size
# on the same filesystem, both measured in this run. Medians of 3.
#   SCRATCH=.build-update bench/slot-write.sh [PAYLOAD_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
SCRATCH=${SCRATCH:-.build}
MIB=${1:-200}
swift build -c release --scratch-path "$SCRATCH" --product outpost >/dev/null
BIN=$(swift build -c release --scratch-path "$SCRATCH" --product outpost --show-bin-path)/outpost
W=$(mktemp -d /var/tmp/outpost-slotbench.XXXXXX)
trap 'rm -rf "$W"' EXIT

head -c $((MIB << 20)) /dev/urandom > "$W/slot.img"
sha=$(sha256sum "$W/slot.img" | cut -d' ' -f1)
cat > "$W/slot.json" <<JSON
{"version":"bench","size":$((MIB << 20)),"sha256":"$sha","rootOffset":0,"rootDataBlocks":1,"hashOffset":4096,
 "rootHash":"$(printf '%064d' 0)","salt":"00","kernelSHA256":"","initrdSHA256":"","cmdline":"","grubCfg":""}
JSON
"$BIN" keys generate --out "$W/keys" --name bench >/dev/null
"$BIN" bundle create --quiet --key "$W/keys/bench.key.pem" --slot "$W/slot.img" --output "$W/update.bundle"

make_disk() {   # 2 x 256 MiB slots, IMGA active, IMGB unused
    rm -f "$W/disk.img"; truncate -s 600M "$W/disk.img"
    sgdisk -o -n 1:2048:+256M -t 1:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6 -c 1:IMGA \
              -n 2:0:+256M -t 2:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6 -c 2:IMGB "$W/disk.img" >/dev/null 2>&1
    "$BIN" image set-slot "$W/disk.img" --slot IMGA --state active >/dev/null
}

now() { date +%s.%N; }
median() { sort -n | sed -n 2p; }
eng_w=() eng_t=() dd_t=()
for i in 1 2 3; do
    make_disk
    rm -rf "$W/state"; mkdir -p "$W/state"
    sync
    line=$("$BIN" bundle install --json --disk "$W/disk.img" --trust "$W/keys" --state "$W/state" "$W/update.bundle")
    eng_w+=("$(sed -E 's/.*"writeSeconds":([0-9.]+).*/\1/' <<<"$line")")
    eng_t+=("$(sed -E 's/.*"totalSeconds":([0-9.]+).*/\1/' <<<"$line")")
    [ "$i" = 1 ] && echo "engine run 1: $line"

    rm -f "$W/dd.img"; truncate -s 256M "$W/dd.img"; sync
    t0=$(now)
    dd if="$W/slot.img" of="$W/dd.img" bs=1M oflag=direct conv=notrunc,fsync status=none
    t1=$(now)
    dd_t+=("$(awk "BEGIN{print $t1 - $t0}")")
done
w=$(printf '%s\n' "${eng_w[@]}" | median)
t=$(printf '%s\n' "${eng_t[@]}" | median)
d=$(printf '%s\n' "${dd_t[@]}" | median)
echo "payload:                      $MIB MiB"
echo "dd oflag=direct conv=fsync:   ${d}s  ($(awk "BEGIN{printf \"%.0f\", $MIB / $d}") MiB/s)"
echo "engine write pass (+fsync):   ${w}s  ($(awk "BEGIN{printf \"%.0f\", $MIB / $w}") MiB/s)"
echo "engine install, all passes:   ${t}s  (verify + write + read-back + GPT)"
echo "ratio write pass / dd:        $(awk "BEGIN{printf \"%.2f\", $d / $w}")x throughput"
echo "ratio whole install / dd:     $(awk "BEGIN{printf \"%.2f\", $d / $t}")x throughput"
