// Update media: a disk (a USB stick, or a second QEMU drive) that carries a
// FAT filesystem labelled OUTPOSTUPD with *.bundle files at its root. This
// is the "local file" source for devices with no controller, and what the
// QEMU update tests use. Bundles on it are verified like any other: the
// medium itself is never trusted.

#if canImport(Glibc)
import Glibc
import OutpostEarlyBoot
#endif

public enum UpdateMedia {
    public static let label = "OUTPOSTUPD"
    public static let mountPoint = "/run/update-media"

    /// Every block device that might carry update media: whole disks
    /// (media are often a bare filesystem with no partition table) and their
    /// partitions, from /sys/block. Device nodes are created if missing.
    static func candidates() -> [String] {
        guard let disks = try? Sys.listDirectory("/sys/block") else { return [] }
        var out: [String] = []
        for disk in disks.sorted() where !BlockDevices.ignoredPrefixes.contains(where: { disk.hasPrefix($0) }) {
            let parts = ((try? Sys.listDirectory("/sys/block/\(disk)")) ?? []).filter { $0.hasPrefix(disk) }.sorted()
            for (name, sysfs) in [(disk, "/sys/block/\(disk)")] + parts.map({ ($0, "/sys/block/\(disk)/\($0)") }) {
                let node = "/dev/\(name)"
                if !Sys.exists(node), let (major, minor) = BlockDevices.deviceNumbers(sysfsDir: sysfs) {
                    try? Sys.mknodBlock(node, major: major, minor: minor)
                }
                out.append(node)
            }
        }
        return out
    }

    /// Mounts the first update medium read-only and lists its bundles,
    /// sorted by name. Empty when there is none.
    public static func findBundles() -> [String] {
        for device in candidates() {
            guard let fs = try? BlockDevices.filesystem(devicePath: device), fs.type == "vfat",
                  fs.label?.uppercased() == label else { continue }
            try? Sys.mkdir(mountPoint)
            _ = try? Sys.unmount(mountPoint)
            do {
                try Sys.mount(source: device, target: mountPoint, type: "vfat",
                              flags: UInt(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
            } catch {
                Console.line("warning: update media \(device): \(error)")
                continue
            }
            Console.line("update: media \(label) found on \(device)")
            let names = (try? Sys.listDirectory(mountPoint)) ?? []
            return names.filter { $0.lowercased().hasSuffix(".bundle") }.sorted().map { mountPoint + "/" + $0 }
        }
        return []
    }
}
