#!/usr/bin/env bash
# test-measured-boot.sh GRUB_DIR KERNEL INITRD [WORK]
#
# Boots stage 1 -> stage 2 -> a real kernel under QEMU (TCG, OVMF) with
# swtpm as the TPM, and prints the PCR 8 and PCR 9 values the booted kernel
# reads from /sys/class/tpm/tpm0/pcr-sha256/, so that Measurements.swift's
# prediction can be compared with a real TPM.
#
# INITRD must print "PCR8=<hex>" and "PCR9=<hex>" lines on the serial
# console and power off; INITRD "-" builds such an initramfs from Debian's
# busybox-static (grub/pcr-initrd.sh). Both slots carry the same boot
# squashfs; the attributes are ATTR_A (default 0x102) and ATTR_B (0x000):
# ATTR_A=0x102 ATTR_B=0x013 boots IMGB, ATTR_A=0x000 the rescue path.
# CMDLINE and VERSION are what the builder substitutes into stage2.cfg.in.
#
# Prints PCR8=..., PCR9=..., CMDLINE=... (what the kernel saw). With
# EXPECT_PCR8 / EXPECT_PCR9 set it compares (case-insensitively) and exits
# 1 on a mismatch. WORK/stage2.cfg is the rendered stage 2, for predicting.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "test-measured-boot: error: $*" >&2; exit 1; }
[ $# -ge 3 ] || die "usage: test-measured-boot.sh GRUB_DIR KERNEL INITRD [WORK]"
GRUB_DIR=$1 KERNEL=$2 INITRD=$3
WORK=${4:-$(mktemp -d /tmp/outpost-measured.XXXXXX)}
mkdir -p "$WORK"
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
UUID_A=${UUID_A:-6F1C2E0A-3B4D-4E5F-8A9B-0C1D2E3F4A5B}
UUID_B=${UUID_B:-7A2B3C4D-5E6F-4A1B-9C2D-3E4F5A6B7C8D}
CMDLINE=${CMDLINE:-'console=ttyS0,115200 panic=10 rdinit=/init outpost.slot=${outpost_slot_uuid} outpost.root=1048576:16 outpost.verity=1114112:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef:00ff'}
VERSION=${VERSION:-0.0.0-test}
for t in swtpm qemu-system-x86_64 sgdisk cgpt mkfs.vfat mcopy mksquashfs; do
  command -v "$t" >/dev/null || die "missing tool $t"
done

if [ "$INITRD" = - ]; then
  INITRD="$WORK/pcr-initrd.img"
  "$HERE/pcr-initrd.sh" "$INITRD" || die "cannot build the PCR-printing initramfs"
fi

# Stage 2 rendered exactly as the builder does: replace the two placeholders.
python3 - "$HERE/stage2.cfg.in" "$WORK/stage2.cfg" "$CMDLINE" "$VERSION" <<'EOF' || die "render failed"
import sys
s = open(sys.argv[1]).read().replace("@CMDLINE@", sys.argv[3]).replace("@VERSION@", sys.argv[4])
open(sys.argv[2], "w").write(s)
EOF

rm -rf "$WORK/boot" && mkdir -p "$WORK/boot"
cp "$WORK/stage2.cfg" "$WORK/boot/grub.cfg"; cp "$KERNEL" "$WORK/boot/vmlinuz"; cp "$INITRD" "$WORK/boot/initrd.img"
mksquashfs "$WORK/boot" "$WORK/boot.sqfs" -noappend -all-root -quiet -noI -noD -noF -noX >/dev/null || die "mksquashfs failed"
rm -f "$WORK/efi.img"
mkfs.vfat -F 32 -n EFI -C "$WORK/efi.img" $((64 * 1024)) >/dev/null || die "mkfs.vfat failed"
mmd -i "$WORK/efi.img" ::/EFI ::/EFI/BOOT && mcopy -i "$WORK/efi.img" "$GRUB_DIR/BOOTX64.EFI" "$GRUB_DIR/grub.cfg" ::/EFI/BOOT/ || die "mcopy failed"

IMG="$WORK/disk.img"
rm -f "$IMG"; truncate -s 160M "$IMG"
sgdisk -n 1:2048:+64M -t 1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B -c 1:EFI \
       -n 2:0:+40M -t 2:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6 -c 2:IMGA -u 2:$UUID_A \
       -n 3:0:+40M -t 3:5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6 -c 3:IMGB -u 3:$UUID_B "$IMG" >/dev/null || die "sgdisk failed"
for p in 1:efi.img 2:boot.sqfs 3:boot.sqfs; do
  start=$(sgdisk -i "${p%%:*}" "$IMG" | sed -n 's/^First sector: \([0-9]*\).*/\1/p')
  dd if="$WORK/${p#*:}" of="$IMG" bs=512 seek="$start" conv=notrunc status=none || die "dd failed"
done
cgpt add -i 2 -A "${ATTR_A:-0x102}" "$IMG" && cgpt add -i 3 -A "${ATTR_B:-0x000}" "$IMG" || die "cgpt failed"

# A fresh TPM; QEMU's OVMF sends TPM2_Startup itself (no --flags startup-clear).
rm -rf "$WORK/tpm" && mkdir -p "$WORK/tpm"
swtpm socket --tpm2 --tpmstate dir="$WORK/tpm" --ctrl type=unixio,path="$WORK/tpm/sock" \
  --log file="$WORK/tpm/log" &
SWTPM_PID=$!
trap 'kill $SWTPM_PID 2>/dev/null' EXIT
for _ in $(seq 50); do [ -S "$WORK/tpm/sock" ] && break; sleep 0.1; done
[ -S "$WORK/tpm/sock" ] || die "swtpm did not start"

cp "$OVMF_VARS" "$WORK/vars.fd"
timeout "${QEMU_TIMEOUT:-300}" qemu-system-x86_64 -accel tcg -m 1024 -machine q35 -no-reboot \
  -drive if=pflash,format=raw,readonly=on,file="$OVMF_CODE" \
  -drive if=pflash,format=raw,file="$WORK/vars.fd" \
  -drive file="$IMG",format=raw,if=virtio \
  -chardev socket,id=chrtpm,path="$WORK/tpm/sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
  -device tpm-tis,tpmdev=tpm0 \
  -serial file:"$WORK/serial.log" -display none -monitor none -net none </dev/null >"$WORK/qemu.log" 2>&1
rc=$?
[ $rc -eq 124 ] && echo "test-measured-boot: QEMU timed out" >&2

tr -d '\r' <"$WORK/serial.log" >"$WORK/serial.txt"
grep -E '^(PCR8|PCR9|CMDLINE)=' "$WORK/serial.txt" | sort -u
pcr() { sed -n "s/^PCR$1=\([0-9A-Fa-f]*\).*/\1/p" "$WORK/serial.txt" | head -n1 | tr a-f A-F; }
[ -n "$(pcr 8)" ] || die "no PCR values on the serial console (see $WORK/serial.txt)"
status=0
for n in 8 9; do
  want=$(eval echo "\${EXPECT_PCR$n:-}" | tr a-f A-F)
  [ -z "$want" ] && continue
  if [ "$(pcr $n)" = "$want" ]; then echo "ok   PCR $n matches the prediction"
  else echo "FAIL PCR $n is $(pcr $n), predicted $want"; status=1; fi
done
exit $status
