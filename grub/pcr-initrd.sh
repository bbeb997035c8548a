#!/usr/bin/env bash
# pcr-initrd.sh OUT
#
# A tiny initramfs (Debian's busybox-static) for measured-boot experiments:
# it prints the SHA-256 PCR 8 and 9 values and the kernel command line on
# the console, then powers off. Used by test-measured-boot.sh.
set -euo pipefail
die() { echo "pcr-initrd: error: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: pcr-initrd.sh OUT"
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX (apt-get install busybox-static)"
# A dynamically linked busybox would need its libraries in the initramfs.
if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
  die "$BUSYBOX is not statically linked (apt-get install busybox-static)"
fi
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
mkdir -p "$DIR/bin"
cp "$BUSYBOX" "$DIR/bin/busybox"
cat >"$DIR/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "PCR8=$(cat /sys/class/tpm/tpm0/pcr-sha256/8)"
echo "PCR9=$(cat /sys/class/tpm/tpm0/pcr-sha256/9)"
echo "CMDLINE=$(cat /proc/cmdline)"
poweroff -f
INIT
chmod +x "$DIR/init"
(cd "$DIR" && find . | cpio -o -H newc --quiet | gzip -9) >"$1"
