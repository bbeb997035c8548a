#!/bin/sh
# Runs the vault's dm-crypt tests (VaultVolumeTests) inside a QEMU TCG guest
# on Debian 12's kernel, for build hosts whose own kernel has no
# device-mapper (a Firecracker VM, a container). The guest mounts the host's
# / read-only over 9p, gives the tests a tmpfs /tmp, loads exactly the vault
# modules of rootfs/modules.txt (loop, dm_crypt, xts, ecb; aes-generic is
# built in) and runs the already built test binary. The CPU model has no
# AES-NI, as under the slot's QEMU TCG.
#
# usage: scripts/vault-dm-vm.sh [FILTER]     (run `swift build --build-tests` first)
# needs: qemu-system-x86, busybox-static, cpio; the kernel the builder caches
# under /var/cache/outpost/kernels; on the host also e2fsprogs, cryptsetup-bin,
# util-linux (findmnt), coreutils (sha256sum).
set -eu
filter=${1:-VaultVolumeTests}
repo=$(cd "$(dirname "$0")/.." && pwd)
tests="$repo/.build/debug/OutpostPackageTests.xctest"
[ -x "$tests" ] || { echo "vault-dm-vm: $tests missing; run swift build --build-tests" >&2; exit 1; }
kernel_dir=$(ls -d /var/cache/outpost/kernels/linux-image-*-amd64_* 2>/dev/null | sort | tail -1)
[ -n "$kernel_dir" ] || { echo "vault-dm-vm: no kernel under /var/cache/outpost/kernels (run a build first)" >&2; exit 1; }
vmlinuz=$(ls "$kernel_dir"/boot/vmlinuz-* | head -1)
modules=$(ls -d "$kernel_dir"/lib/modules/*/kernel)
work=$(mktemp -d /tmp/vault-dm-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/mods" "$work/root/proc" "$work/root/sys" "$work/root/dev" "$work/root/mnt"
cp /bin/busybox "$work/root/bin/"
# Dependencies first (from modules.dep, by hand: the list is short).
order="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci net/9p/9pnet net/9p/9pnet_virtio
fs/netfs/netfs fs/fscache/fscache fs/9p/9p lib/crc16 fs/mbcache fs/jbd2/jbd2 crypto/crc32c_generic
fs/ext4/ext4 drivers/block/loop drivers/md/dm-mod drivers/md/dm-crypt crypto/ecb crypto/xts"
names=""
for m in $order; do
    cp "$modules/$m.ko" "$work/root/mods/"
    names="$names $(basename "$m")"
done
cat > "$work/root/init" <<EOF
#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $names; do insmod /mods/\$m.ko || echo "insmod \$m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro hostroot /mnt || { echo "9p mount failed"; poweroff -f; }
mount -t proc proc /mnt/proc; mount -t sysfs sys /mnt/sys; mount -t devtmpfs dev /mnt/dev
mount -t tmpfs -o size=1g tmp /mnt/tmp; mount -t tmpfs run /mnt/run
chroot /mnt /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp /bin/sh -c \
    "cd '$repo' && '$tests' --testing-library swift-testing --filter '$filter' 2>&1"
echo "VAULT-DM-VM: exit \$?"
poweroff -f
EOF
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initrd.gz")
timeout 900 qemu-system-x86_64 -machine q35 -accel tcg -cpu qemu64 -m 2048 -smp 2 \
    -kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
    -nographic -no-reboot \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    | tee "$work/console.log" | grep -v '^\[' || true
grep -q "VAULT-DM-VM: exit 0" "$work/console.log"
