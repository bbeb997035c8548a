// Finds the slot partition, and the CONFIG and PERSIST partitions on the
// same disk, by reading GPT entries through libblkid.
//
// Disks come from /sys/block and each one's partition table is read with a
// libblkid probe (no udev, no /dev/disk/by-* links exist this early). CONFIG
// and PERSIST are only ever taken from the disk that holds the booted slot,
// so a USB stick carrying a partition named CONFIG cannot inject identity.

#if canImport(Glibc)
import Glibc
#endif
import CBlkid
import OutpostPlatform

/// One GPT entry of a disk, with the device node that exposes it.
public struct PartitionInfo: Equatable, Sendable {
    /// 1-based GPT entry number.
    public var number: Int
    /// Unique partition GUID, upper-case.
    public var partUUID: String
    /// GPT partition name (PARTLABEL), e.g. "IMGA".
    public var name: String
    /// Partition type GUID, upper-case.
    public var typeGUID: String
    /// First 512-byte sector on the disk.
    public var startSector: UInt64
    /// Length in 512-byte sectors.
    public var sectorCount: UInt64
    /// The GPT attribute bits (slot priority/tries/successful live in 48–63).
    public var attributes: UInt64
    /// Device node, e.g. /dev/vda2 (empty until the kernel created the partition).
    public var devicePath: String
    public var major: UInt32
    public var minor: UInt32
}

/// What a superblock probe found on a partition.
public struct FilesystemSignature: Equatable, Sendable {
    public var type: String
    public var label: String?
}

/// A whole disk with a GPT.
public struct DiskInfo: Equatable, Sendable {
    public var name: String
    public var devicePath: String
    public var partitions: [PartitionInfo]
}

/// The partition type GUIDs of ARCHITECTURE.md's disk table.
public enum PartitionType {
    public static let slot = "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"
    public static let config = "13307E62-CD9C-4920-8F9B-91B45828B798"
    public static let persist = "5F24425A-2DFA-11E8-A270-7B663FACCC2C"
}

public enum BlockDevices {
    /// Block devices that can never hold an Outpost disk; probing a CD drive
    /// without media or a device-mapper node would only cost time.
    public static let ignoredPrefixes = ["loop", "ram", "dm-", "zram", "sr", "md", "nbd"]

    /// Every GPT disk the kernel currently exposes, in name order.
    public static func scanDisks() -> [DiskInfo] {
        guard let names = try? Sys.listDirectory("/sys/block") else { return [] }
        return names
            .filter { name in !ignoredPrefixes.contains { name.hasPrefix($0) } }
            .compactMap { readDisk(name: $0) }
    }

    /// Polls until a partition with `partUUID` appears on some disk, for at
    /// most `timeoutMilliseconds` (devices probe asynchronously after their
    /// driver loads). Returns the disk and the partition, or nil.
    public static func waitForPartition(partUUID: String, timeoutMilliseconds: Int64) -> (DiskInfo, PartitionInfo)? {
        let deadline = MonotonicClock.now().milliseconds + timeoutMilliseconds
        while true {
            for disk in scanDisks() {
                if let part = disk.partitions.first(where: { $0.partUUID == partUUID.uppercased() }),
                   !part.devicePath.isEmpty {
                    return (disk, part)
                }
            }
            if MonotonicClock.now().milliseconds >= deadline { return nil }
            MonotonicClock.sleep(for: .milliseconds(100))
        }
    }

    /// Reads one disk's partition table; nil when it has none libblkid understands.
    public static func readDisk(name: String) -> DiskInfo? {
        let devicePath = "/dev/\(name)"
        if !Sys.exists(devicePath), let (major, minor) = deviceNumbers(sysfsDir: "/sys/block/\(name)") {
            try? Sys.mknodBlock(devicePath, major: major, minor: minor)
        }
        guard let probe = blkid_new_probe_from_filename(devicePath) else { return nil }
        defer { blkid_free_probe(probe) }
        guard let list = blkid_probe_get_partitions(probe) else { return nil }
        let kernelParts = kernelPartitions(disk: name)
        var partitions: [PartitionInfo] = []
        let count = blkid_partlist_numof_partitions(list)
        guard count > 0 else { return nil }
        for index in 0..<count {
            guard let entry = blkid_partlist_get_partition(list, index) else { continue }
            let number = Int(blkid_partition_get_partno(entry))
            let kernel = kernelParts[number]
            partitions.append(PartitionInfo(
                number: number,
                partUUID: string(blkid_partition_get_uuid(entry)).uppercased(),
                name: string(blkid_partition_get_name(entry)),
                typeGUID: string(blkid_partition_get_type_string(entry)).uppercased(),
                startSector: UInt64(max(0, blkid_partition_get_start(entry))),
                sectorCount: UInt64(max(0, blkid_partition_get_size(entry))),
                attributes: UInt64(blkid_partition_get_flags(entry)),
                devicePath: kernel?.path ?? "",
                major: kernel?.major ?? 0,
                minor: kernel?.minor ?? 0))
        }
        return DiskInfo(name: name, devicePath: devicePath, partitions: partitions)
    }

    /// The filesystem libblkid finds on a device, or nil when the device
    /// holds no recognisable filesystem (a fresh PERSIST).
    public static func filesystem(devicePath: String) throws(SystemError) -> FilesystemSignature? {
        guard let probe = blkid_new_probe_from_filename(devicePath) else {
            throw SystemError(call: "blkid_new_probe_from_filename", object: devicePath, code: errno)
        }
        defer { blkid_free_probe(probe) }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL)
        switch blkid_do_safeprobe(probe) {
        case 0:
            return FilesystemSignature(type: lookup(probe, "TYPE") ?? "unknown", label: lookup(probe, "LABEL"))
        case 1:
            return nil
        case -2:
            // Two signatures at once: never guess which one is meant.
            return FilesystemSignature(type: "ambivalent", label: nil)
        default:
            throw SystemError(call: "blkid_do_safeprobe", object: devicePath, code: errno == 0 ? EIO : errno)
        }
    }

    private static func lookup(_ probe: blkid_probe, _ key: String) -> String? {
        var value: UnsafePointer<CChar>? = nil
        var length = 0
        guard blkid_probe_lookup_value(probe, key, &value, &length) == 0, let value else { return nil }
        return String(cString: value)
    }

    /// Partition number → (device node, major, minor) from /sys/block/DISK/*/partition.
    static func kernelPartitions(disk: String) -> [Int: (path: String, major: UInt32, minor: UInt32)] {
        var result: [Int: (path: String, major: UInt32, minor: UInt32)] = [:]
        guard let entries = try? Sys.listDirectory("/sys/block/\(disk)") else { return result }
        for entry in entries where entry.hasPrefix(disk) {
            let dir = "/sys/block/\(disk)/\(entry)"
            guard let text = try? Sys.readText("\(dir)/partition"),
                  let number = Int(text.trimmingSpaces().filter { $0 != "\n" }),
                  let (major, minor) = deviceNumbers(sysfsDir: dir) else { continue }
            let path = "/dev/\(entry)"
            if !Sys.exists(path) {
                try? Sys.mknodBlock(path, major: major, minor: minor)
            }
            result[number] = (path, major, minor)
        }
        return result
    }

    /// Parses a sysfs "dev" file ("253:0").
    public static func deviceNumbers(sysfsDir: String) -> (UInt32, UInt32)? {
        guard let text = try? Sys.readText("\(sysfsDir)/dev") else { return nil }
        let parts = text.filter { $0 != "\n" }.split(separator: ":")
        guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) else { return nil }
        return (major, minor)
    }

    private static func string(_ pointer: UnsafePointer<CChar>?) -> String {
        pointer.map { String(cString: $0) } ?? ""
    }
}
