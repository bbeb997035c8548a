#!/usr/bin/env bash
# test-select.sh [GRUB_DIR]
#
# Proves stage-1 GRUB's slot selection (outpost_select + stage1.cfg) in QEMU
# (TCG, OVMF) on throwaway disks, checking the result with independent tools
# (cgpt, sgdisk, sha256sum). GRUB_DIR holds BOOTX64.EFI and grub.cfg from
# build-grub.sh; without it build-grub.sh is run (a cache hit takes seconds).
#
# Each case writes a fresh disk: EFI (FAT32, /EFI/BOOT/{BOOTX64.EFI,grub.cfg}),
# IMGA and IMGB (a tiny squashfs whose /grub.cfg echoes its slot and halts),
# CONFIG and PERSIST (empty). It sets the slot attributes with cgpt, boots,
# and checks GRUB's decision on the serial console and the GPT afterwards.
#
# Exit status: 0 when every case passed, 1 otherwise. Artifacts are kept in
# $OUTPOST_TEST_WORK (default: a temp dir, removed on success).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-180}

SLOT_TYPE=5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6
EFI_TYPE=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
CONFIG_TYPE=13307E62-CD9C-4920-8F9B-91B45828B798
PERSIST_TYPE=5F24425A-2DFA-11E8-A270-7B663FACCC2C
# Fixed PARTUUIDs so the serial output can be checked (and PCRs predicted).
UUID_A=6F1C2E0A-3B4D-4E5F-8A9B-0C1D2E3F4A5B
UUID_B=7A2B3C4D-5E6F-4A1B-9C2D-3E4F5A6B7C8D

die() { echo "test-select: error: $*" >&2; exit 1; }
for t in qemu-system-x86_64 sgdisk cgpt mkfs.vfat mmd mcopy mksquashfs sha256sum timeout; do
  command -v "$t" >/dev/null || die "missing tool $t"
done
[ -f "$OVMF_CODE" ] && [ -f "$OVMF_VARS" ] || die "OVMF not found ($OVMF_CODE, $OVMF_VARS)"

WORK="${OUTPOST_TEST_WORK:-$(mktemp -d /tmp/outpost-test-select.XXXXXX)}"
mkdir -p "$WORK"
GRUB_DIR="${1:-}"
if [ -z "$GRUB_DIR" ]; then
  GRUB_DIR="$WORK/grub"
  "$HERE/build-grub.sh" "$GRUB_DIR" || die "build-grub.sh failed"
fi
[ -f "$GRUB_DIR/BOOTX64.EFI" ] && [ -f "$GRUB_DIR/grub.cfg" ] || die "$GRUB_DIR lacks BOOTX64.EFI / grub.cfg"

MiB=$((1024 * 1024))
# --- the pieces every disk shares: EFI FAT image and the two slot squashfs ---
make_pieces() {
  local s
  rm -f "$WORK/efi.img"
  mkfs.vfat -F 32 -n EFI -C "$WORK/efi.img" $((64 * 1024)) >/dev/null || die "mkfs.vfat failed"
  mmd -i "$WORK/efi.img" ::/EFI ::/EFI/BOOT || die "mmd failed"
  mcopy -i "$WORK/efi.img" "$GRUB_DIR/BOOTX64.EFI" "$GRUB_DIR/grub.cfg" ::/EFI/BOOT/ || die "mcopy failed"
  for s in IMGA IMGB; do
    rm -rf "$WORK/$s.d" "$WORK/$s.sqfs"; mkdir -p "$WORK/$s.d"
    cat >"$WORK/$s.d/grub.cfg" <<EOF
echo "outpost-stage2: $s slot=\${outpost_slot_uuid} part=\${outpost_slot_part} rescue=\${outpost_rescue}"
halt
EOF
    mksquashfs "$WORK/$s.d" "$WORK/$s.sqfs" -noappend -all-root -quiet >/dev/null || die "mksquashfs failed"
  done
}

# make_disk IMG ATTR_A ATTR_B
make_disk() {
  local img=$1
  rm -f "$img"
  truncate -s $((96 * MiB)) "$img"
  sgdisk -Z "$img" >/dev/null 2>&1
  sgdisk -n 1:2048:+64M -t 1:$EFI_TYPE -c 1:EFI \
         -n 2:0:+8M -t 2:$SLOT_TYPE -c 2:IMGA -u 2:$UUID_A \
         -n 3:0:+8M -t 3:$SLOT_TYPE -c 3:IMGB -u 3:$UUID_B \
         -n 4:0:+1M -t 4:$CONFIG_TYPE -c 4:CONFIG \
         -n 5:0:+1M -t 5:$PERSIST_TYPE -c 5:PERSIST "$img" >/dev/null || die "sgdisk failed"
  put 1 "$WORK/efi.img" "$img"; put 2 "$WORK/IMGA.sqfs" "$img"; put 3 "$WORK/IMGB.sqfs" "$img"
  cgpt add -i 2 -A "$2" "$img" && cgpt add -i 3 -A "$3" "$img" || die "cgpt add failed"
}
put() {  # put PARTNUM FILE IMG: copy FILE to the start of partition PARTNUM
  local start
  start=$(sgdisk -i "$1" "$3" | sed -n 's/^First sector: \([0-9]*\).*/\1/p')
  [ -n "$start" ] || die "no partition $1 in $3"
  dd if="$2" of="$3" bs=512 seek="$start" conv=notrunc status=none || die "dd failed"
}
# cgpt prints the attribute without leading zeros (0x3); normalize to 0x003.
attr() { local v; v=$(cgpt show -i "$1" -A "$2") && printf '0x%03x' "$((v))"; }
# The same, read from the backup GPT only: a copy whose primary header is
# zeroed makes cgpt fall back to the backup (checks that both were written).
backup_attr() {
  cp "$2" "$WORK/backup-check.img"
  dd if=/dev/zero of="$WORK/backup-check.img" bs=512 seek=1 count=1 conv=notrunc status=none
  attr "$1" "$WORK/backup-check.img" 2>/dev/null
}
# Every partition's fields except the attribute flags (type, GUID, range, name).
fields() { local n; for n in 1 2 3 4 5; do sgdisk -i "$n" "$1" | grep -v '^Attribute flags'; done; }
# The GPT bytes: protective MBR + primary header + entries, and the backup.
gpt_sum() {
  local sectors=$(($(stat -c %s "$1") / 512))
  { dd if="$1" bs=512 count=34 status=none; dd if="$1" bs=512 skip=$((sectors - 34)) status=none; } | sha256sum | cut -d' ' -f1
}

boot() {  # boot IMG LOG
  cp "$OVMF_VARS" "$WORK/vars.fd"
  timeout "$QEMU_TIMEOUT" qemu-system-x86_64 -accel tcg -m 512 -machine q35 -no-reboot \
    -drive if=pflash,format=raw,readonly=on,file="$OVMF_CODE" \
    -drive if=pflash,format=raw,file="$WORK/vars.fd" \
    -drive file="$1",format=raw,if=virtio \
    -serial file:"$2" -display none -monitor none -net none </dev/null >"$2.qemu" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "    (QEMU timed out after ${QEMU_TIMEOUT}s)"
  return 0
}

PASS=0; FAIL=0
check() {  # check DESCRIPTION CONDITION...
  local what=$1; shift
  if "$@"; then echo "    ok   $what"; else echo "    FAIL $what"; BAD=1; fi
}
has() { grep -qF -- "$1" "$LOG"; }
hasnt() { ! grep -qF -- "$1" "$LOG"; }
eq() { [ "$1" = "$2" ] || { echo "         got '$1', want '$2'"; return 1; }; }

# run_case NAME ATTR_A ATTR_B WANT_SLOT WANT_A_AFTER WANT_B_AFTER [rescue]
run_case() {
  local name=$1 a=$2 b=$3 want=$4 wa=$5 wb=$6 mode=${7:-}
  local img="$WORK/$name.img" part uuid before after
  LOG="$WORK/$name.serial"; BAD=0
  echo "case $name: IMGA=$a IMGB=$b -> expect $want${mode:+ ($mode)}"
  make_disk "$img" "$a" "$b"
  before=$(gpt_sum "$img"); local fields_before; fields_before=$(fields "$img")
  local t0=$SECONDS
  boot "$img" "$LOG"
  echo "    booted in $((SECONDS - t0))s"
  if [ "$want" = IMGA ]; then part=gpt2; uuid=$UUID_A; else part=gpt3; uuid=$UUID_B; fi
  if [ "$mode" = rescue ]; then
    check "GRUB reports rescue of $want" has "outpost-grub: no bootable slot; rescue booting $want ($part)"
    check "stage 2 of $want ran with rescue flag" has "outpost-stage2: $want slot=$uuid part=$part rescue=no-bootable-slot"
  else
    check "GRUB reports booting $want" has "outpost-grub: booting $want ($part)"
    check "stage 2 of $want ran" has "outpost-stage2: $want slot=$uuid part=$part rescue="
    check "no rescue" hasnt "rescue=no-bootable-slot"
  fi
  check "never at a GRUB prompt" hasnt "grub>"
  check "IMGA attribute after boot" eq "$(attr 2 "$img")" "$wa"
  check "IMGB attribute after boot" eq "$(attr 3 "$img")" "$wb"
  check "IMGA attribute in the backup GPT" eq "$(backup_attr 2 "$img")" "$wa"
  check "IMGB attribute in the backup GPT" eq "$(backup_attr 3 "$img")" "$wb"
  check "all other partition fields unchanged" eq "$(fields "$img")" "$fields_before"
  after=$(gpt_sum "$img")
  if [ "$wa" = "$a" ] && [ "$wb" = "$b" ]; then
    check "GPT (first and last 34 sectors) unchanged" eq "$after" "$before"
  else
    check "GPT was rewritten" [ "$after" != "$before" ]
  fi
  check "sgdisk -v clean" sh -c "sgdisk -v '$img' 2>&1 | grep -q 'No problems found'"
  if [ $BAD -eq 0 ]; then PASS=$((PASS + 1)); else FAIL=$((FAIL + 1)); echo "    serial log: $LOG"; fi
}

make_pieces
run_case a-active-a        0x102 0x000 IMGA 0x102 0x000
run_case b-updating-b      0x102 0x013 IMGB 0x102 0x003
run_case c-fallback-a      0x102 0x003 IMGA 0x102 0x003
run_case d-tie-lower       0x102 0x102 IMGA 0x102 0x102
run_case d2-tie-tries      0x013 0x013 IMGA 0x003 0x013
run_case e-rescue          0x000 0x003 IMGA 0x000 0x003 rescue

echo "$PASS passed, $FAIL failed"
if [ $FAIL -eq 0 ] && [ -z "${OUTPOST_TEST_WORK:-}" ]; then rm -rf "$WORK"; fi
[ $FAIL -eq 0 ]
