// Update media: a disk (a USB stick, or a second QEMU drive) that carries a
// FAT filesystem labelled OUTPOSTUPD with *.bundle files at its root. This
// is the "local file" source for devices with no controller, and what the
// QEMU update tests use. Bundles on it are verified like any other: the
// medium itself is never trusted.

#if canImport(Glibc)
import Glibc
#endif

public enum UpdateMedia {
    public static let label = "OUTPOSTUPD"
    public static let mountPoint = "/run/update-media"

    /// Mounts the first update medium read-only and lists its bundles,
    /// sorted by name. Empty when there is none.
    public static func findBundles() -> [String] {
        for disk in BlockDevices.scanDisks() {
            for device in [disk.devicePath] + disk.partitions.map(\.devicePath) where !device.isEmpty {
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
                let names = (try? Sys.listDirectory(mountPoint)) ?? []
                return names.filter { $0.lowercased().hasSuffix(".bundle") }.sorted().map { mountPoint + "/" + $0 }
            }
        }
        return []
    }
}
