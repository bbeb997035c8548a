#!/usr/bin/env bash
# Direct-boot test of outpostd's early boot, without GRUB: builds a slot per
# docs/boot.md by hand, puts it into IMGA of a hand-made GPT disk, boots
# Debian's kernel with `-kernel/-initrd` under QEMU TCG, and checks
#   1. first boot: "outpost: ready slot=IMGA version=..." (PERSIST created and grown),
#      then Ctrl-Alt-Del → SIGINT → clean power-off;
#   2. second boot: exactly one "outpost:" line, PERSIST mounted as is;
#   3. one byte flipped inside the root squashfs → "outpost: error: verity..." and no ready;
#   4. a PARTUUID on the command line that no partition has → "outpost: error: slot partition ... not found";
#   5. outpost.rescue=no-bootable-slot → "outpost: rescue slot=IMGA reason=no-bootable-slot".
# Usage: Tests/OutpostAgentTests/boot-direct.sh   (root; needs qemu-system-x86, sgdisk,
#        squashfs-tools, cryptsetup-bin, dosfstools, e2fsprogs, kmod, apt)
# Env: OUTPOST_TEST_WORK (default /tmp/outpost-boot-direct), OUTPOST_CACHE, QEMU_TIMEOUT (s).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${OUTPOST_TEST_WORK:-/tmp/outpost-boot-direct}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-300}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
VERSION=1.0.0-test
mkdir -p "$WORK"
pass=0; fail=0
ok()  { echo "PASS: $*"; pass=$((pass+1)); }
bad() { echo "FAIL: $*"; fail=$((fail+1)); }
now_ms() { date +%s%3N; }

echo "== build outpostd (release, static Swift stdlib)"
swift build -c release --static-swift-stdlib --product outpostd \
    --scratch-path "$REPO/.build-agent" --package-path "$REPO" 2>&1 | tail -1
strip -o "$WORK/outpostd" "$REPO/.build-agent/release/outpostd"

echo "== build the slot assembly driver from Sources/OutpostBuilder/Slot"
mkdir -p "$WORK/driver"
cat > "$WORK/driver/main.swift" <<'SWIFT'
import Foundation
let a = CommandLine.arguments
let assembly = SlotAssembly(rootfs: URL(fileURLWithPath: a[1]), work: URL(fileURLWithPath: a[2]))
do {
    let kernel = try assembly.fetchKernel()
    let root = try assembly.assembleRoot(kernel: kernel, outpostd: URL(fileURLWithPath: a[3]), version: a[4])
    let initrd = try assembly.buildInitramfs(kernel: kernel, outpostd: URL(fileURLWithPath: a[3]), libraryRoot: root)
    print("KERNEL=\(kernel.vmlinuz.path)\nROOT=\(root.path)\nINITRD=\(initrd.path)")
} catch {
    FileHandle.standardError.write(Data("slot assembly: \(error)\n".utf8))
    exit(1)
}
SWIFT
swiftc -O "$REPO"/Sources/OutpostBuilder/Slot/*.swift "$WORK/driver/main.swift" -o "$WORK/driver/slotdev"

echo "== assemble kernel, root tree, initramfs"
t0=$(now_ms)
eval "$("$WORK/driver/slotdev" "$REPO/rootfs" "$WORK/slot" "$WORK/outpostd" "$VERSION")"
echo "assembled in $(( $(now_ms) - t0 )) ms: kernel=$KERNEL initrd=$INITRD"

echo "== slot image: boot squashfs @0, root squashfs @R, hash tree @H"
S=$WORK/s; rm -rf "$S"; mkdir -p "$S/boot"
cp "$KERNEL" "$S/boot/vmlinuz"; cp "$INITRD" "$S/boot/initrd.img"; echo "# stage 2 (dummy)" > "$S/boot/grub.cfg"
env -u SOURCE_DATE_EPOCH mksquashfs "$S/boot" "$S/boot.sqfs" -noappend -comp xz -all-root -quiet -no-progress \
    -mkfs-time "$SOURCE_DATE_EPOCH" -all-time "$SOURCE_DATE_EPOCH" >/dev/null
t0=$(now_ms)
env -u SOURCE_DATE_EPOCH mksquashfs "$ROOT" "$S/root.sqfs" -noappend -comp xz -all-root -quiet -no-progress \
    -mkfs-time "$SOURCE_DATE_EPOCH" -all-time "$SOURCE_DATE_EPOCH" >/dev/null
echo "root squashfs in $(( $(now_ms) - t0 )) ms"
truncate -s %4096 "$S/root.sqfs"
BOOT_SIZE=$(stat -c %s "$S/boot.sqfs")
ROOT_SIZE=$(stat -c %s "$S/root.sqfs")
MiB=1048576
R=$(( (BOOT_SIZE + MiB - 1) / MiB * MiB ))
D=$(( ROOT_SIZE / 4096 ))
H=$(( R + D * 4096 ))
SALT=$(printf 'outpost-boot-direct' | sha256sum | cut -c1-64)
veritysetup format --no-superblock --salt="$SALT" --data-block-size=4096 --hash-block-size=4096 \
    --hash=sha256 "$S/root.sqfs" "$S/hash.img" > "$S/verity.txt"
ROOTHASH=$(awk '/Root hash:/ {print $3}' "$S/verity.txt")
cp "$S/boot.sqfs" "$S/slot.img"
truncate -s "$R" "$S/slot.img"
cat "$S/root.sqfs" "$S/hash.img" >> "$S/slot.img"
SLOT_SIZE=$(stat -c %s "$S/slot.img")
echo "R=$R D=$D H=$H slot=$SLOT_SIZE bytes roothash=$ROOTHASH"
dd if="$S/slot.img" of="$S/root.check" bs=4096 skip=$((R / 4096)) count="$D" status=none
# Independent check of the layout: veritysetup verifies data at R against the tree at H.
veritysetup verify --no-superblock --salt="$SALT" --data-block-size=4096 --hash-block-size=4096 \
    --hash=sha256 --data-blocks="$D" --hash-offset="$H" \
    "$S/root.check" "$S/slot.img" "$ROOTHASH" \
    && ok "veritysetup verifies the slot layout" || bad "veritysetup verify of the slot layout"

echo "== disk: EFI, IMGA, IMGB, CONFIG (vfat), PERSIST (empty, grown on first boot)"
DISK=$WORK/disk.img
SLOT_MIB=$(( SLOT_SIZE / MiB + 8 ))
IMGA_UUID=6A1B7C3E-0000-4000-8000-00000000A11A
IMGB_UUID=6A1B7C3E-0000-4000-8000-00000000B11B
rm -f "$DISK"; truncate -s $(( 16 + 2 * SLOT_MIB + 16 + 32 + 2 ))M "$DISK"
sgdisk -Z "$DISK" >/dev/null 2>&1 || true
sgdisk -a 2048 \
    -n 1:0:+16M -t 1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B -c 1:EFI \
    -n 2:0:+${SLOT_MIB}M -t 2:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6 -c 2:IMGA -u 2:$IMGA_UUID -A 2:=:0x0102000000000000 \
    -n 3:0:+${SLOT_MIB}M -t 3:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6 -c 3:IMGB -u 3:$IMGB_UUID \
    -n 4:0:+16M -t 4:13307E62-CD9C-4920-8F9B-91B45828B798 -c 4:CONFIG \
    -n 5:0:+32M -t 5:5F24425A-2DFA-11E8-A270-7B663FACCC2C -c 5:PERSIST \
    "$DISK" >/dev/null
start() { sgdisk -i "$1" "$DISK" | awk '/First sector/ {print $3}'; }
dd if="$S/slot.img" of="$DISK" bs=512 seek="$(start 2)" conv=notrunc status=none
mkfs.vfat -n CONFIG -C "$S/config.img" $((16 * 1024)) >/dev/null
dd if="$S/config.img" of="$DISK" bs=512 seek="$(start 4)" conv=notrunc status=none
# Make the disk larger than its GPT says, as when a factory image lands on a bigger eMMC.
truncate -s +128M "$DISK"
P5_BEFORE=$(sgdisk -i 5 "$DISK" | awk '/Partition size/ {print $3}')
cp "$DISK" "$WORK/disk.pristine.img"

CMDLINE_BASE="console=ttyS0 panic=10 rdinit=/init outpost.root=$R:$D outpost.verity=$H:$ROOTHASH:$SALT"

# boot NAME DISK CMDLINE [ctrl-alt-del]: runs QEMU under timeout, logs to $WORK/NAME.log,
# sets BOOT_MS (ms from QEMU start to the first "outpost: ready|error" line).
boot() {
    local name=$1 disk=$2 cmdline=$3 cad=${4:-}
    local log=$WORK/$name.log mon=$WORK/$name.mon
    rm -f "$log" "$mon"
    local t0; t0=$(now_ms)
    timeout "$QEMU_TIMEOUT" qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot \
        -kernel "$KERNEL" -initrd "$INITRD" -append "$cmdline" \
        -drive file="$disk",format=raw,if=virtio -monitor unix:"$mon",server,nowait \
        > "$log" 2>&1 &
    local qpid=$!
    BOOT_MS=
    while kill -0 "$qpid" 2>/dev/null; do
        if [ -z "$BOOT_MS" ] && grep -qsE '^outpost: (ready|error|rescue)' "$log"; then
            BOOT_MS=$(( $(now_ms) - t0 ))
            if [ -n "$cad" ] && grep -qE '^outpost: (ready|rescue)' "$log"; then
                sleep 1
                python3 - "$mon" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(0.3)
s.sendall(b"sendkey ctrl-alt-delete\n"); time.sleep(0.5); s.close()
PY
            fi
        fi
        sleep 0.5
    done
    wait "$qpid" && QEMU_RC=0 || QEMU_RC=$?
    tr -d '\r' < "$log" > "$log.txt"
    echo "-- $name: qemu exit $QEMU_RC, first outpost line after ${BOOT_MS:-never} ms"
    grep -E '^outpost: ' "$log.txt" | sed 's/^/   /' || true
}

echo "== 1. first boot (PERSIST created and grown), then Ctrl-Alt-Del"
boot first "$DISK" "$CMDLINE_BASE outpost.slot=$IMGA_UUID outpost.debug" cad
grep -qx "outpost: ready slot=IMGA version=$VERSION" "$WORK/first.log.txt" \
    && ok "ready line on first boot (${BOOT_MS} ms)" || bad "no ready line on first boot (see $WORK/first.log.txt)"
FIRST_MS=$BOOT_MS
grep -q '^outpost: stopping: signal 2' "$WORK/first.log.txt" && [ "$QEMU_RC" = 0 ] \
    && ok "SIGINT (Ctrl-Alt-Del) powers off cleanly" || bad "no clean power-off on Ctrl-Alt-Del (rc=$QEMU_RC)"
P5_AFTER=$(sgdisk -i 5 "$DISK" | awk '/Partition size/ {print $3}')
sgdisk -v "$DISK" | grep -q 'No problems found' && ok "GPT valid after growth (sgdisk -v)" || bad "sgdisk -v reports problems"
[ "$P5_AFTER" -gt "$P5_BEFORE" ] && ok "PERSIST grown from $P5_BEFORE to $P5_AFTER sectors" \
    || bad "PERSIST not grown ($P5_BEFORE → $P5_AFTER sectors)"
P5_START=$(start 5)
dd if="$DISK" of="$WORK/persist.img" bs=512 skip="$P5_START" count="$P5_AFTER" status=none
e2fsck -fn "$WORK/persist.img" >/dev/null 2>&1 && ok "PERSIST is a clean ext4 (e2fsck -fn)" || bad "e2fsck on PERSIST"
[ "$(blkid -o value -s LABEL "$WORK/persist.img")" = persist ] && ok "PERSIST labelled 'persist'" || bad "PERSIST label"

echo "== 2. second boot: PERSIST reused, exactly one outpost line"
boot second "$DISK" "$CMDLINE_BASE outpost.slot=$IMGA_UUID" cad
[ "$(grep -cE '^outpost: ' "$WORK/second.log.txt" | head -1)" -ge 1 ] && \
[ "$(sed -n '/^outpost: stopping/q;p' "$WORK/second.log.txt" | grep -cE '^outpost: ')" = 1 ] && \
grep -qx "outpost: ready slot=IMGA version=$VERSION" "$WORK/second.log.txt" \
    && ok "second boot: exactly one outpost line, the ready line (${BOOT_MS} ms)" || bad "second boot output"
SECOND_MS=$BOOT_MS

echo "== 3. one byte flipped inside the root squashfs"
cp "$WORK/disk.pristine.img" "$WORK/disk.flip.img"
FLIP=$(( $(start 2) * 512 + R + (D / 2) * 4096 + 123 ))
python3 - "$WORK/disk.flip.img" "$FLIP" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0xFF]))
PY
boot flip "$WORK/disk.flip.img" "$CMDLINE_BASE outpost.slot=$IMGA_UUID"
grep -qE '^outpost: error: verity: root of slot IMGA \(/dev/vda2\) failed verification' "$WORK/flip.log.txt" \
    && ok "verity error line for the flipped byte" || bad "no verity error line (see $WORK/flip.log.txt)"
grep -q '^outpost: ready' "$WORK/flip.log.txt" && bad "ready line despite corrupt root" || ok "no ready line with a corrupt root"
[ "$QEMU_RC" != 124 ] && ok "corrupt root ends in a reboot, not a hang" || bad "corrupt root: QEMU timed out"

echo "== 4. PARTUUID on the command line matches no partition"
boot missing "$WORK/disk.pristine.img" "$CMDLINE_BASE outpost.slot=6A1B7C3E-0000-4000-8000-0000DEADBEEF"
grep -qE '^outpost: error: slot partition PARTUUID=6A1B7C3E-0000-4000-8000-0000DEADBEEF not found' "$WORK/missing.log.txt" \
    && ok "missing-partition error line" || bad "no missing-partition error (see $WORK/missing.log.txt)"
[ "$QEMU_RC" != 124 ] && ok "missing partition ends in a reboot, not a hang" || bad "missing partition: QEMU timed out"

echo "== 5. rescue: stage 1 found no bootable slot"
boot rescue "$DISK" "$CMDLINE_BASE outpost.slot=$IMGA_UUID outpost.rescue=no-bootable-slot" cad
grep -qx "outpost: rescue slot=IMGA reason=no-bootable-slot" "$WORK/rescue.log.txt" && \
! grep -q '^outpost: ready' "$WORK/rescue.log.txt" \
    && ok "rescue line instead of the ready line" || bad "rescue output (see $WORK/rescue.log.txt)"

echo "== measurements"
echo "outpostd (static Swift stdlib, stripped): $(stat -c %s "$WORK/outpostd") bytes"
echo "initramfs ($(basename "$INITRD")): $(stat -c %s "$INITRD") bytes"
echo "root squashfs: $ROOT_SIZE bytes ($D blocks), slot image: $SLOT_SIZE bytes"
echo "QEMU start → ready: first boot ${FIRST_MS} ms (creates PERSIST), second boot ${SECOND_MS} ms"
grep -E '^outpost: debug' "$WORK/first.log.txt" | sed 's/^/   /' || true
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
