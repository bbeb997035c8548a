// CONFIG (read-only identity) and PERSIST (everything the device writes).
//
// PERSIST is created on the device, not in the factory image, so that one
// image fits any disk size: on first boot it is grown to the end of the disk
// and formatted. Formatting labels the filesystem "outpost-new" and renames
// it "persist" only after mke2fs finished; a power cut in between leaves an
// "outpost-new" filesystem that the next boot formats again instead of
// failing to mount a half-written one forever.

#if canImport(Glibc)
import Glibc
#endif
import OutpostDisk
import OutpostShims
import OutpostPlatform

/// Why CONFIG or PERSIST could not be brought up.
public enum DataPartitionError: Error, Equatable, CustomStringConvertible {
    case missing(name: String, disk: String)
    case probeFailed(name: String, SystemError)
    case foreignFilesystem(name: String, device: String, type: String)
    case formatFailed(name: String, device: String, SubprocessError)
    case mountFailed(name: String, SystemError)

    public var description: String {
        switch self {
        case .missing(let name, let disk):
            return "partition \(name) not found on \(disk)"
        case .probeFailed(let name, let error):
            return "cannot probe \(name): \(error)"
        case .foreignFilesystem(let name, let device, let type):
            return "\(name) \(device) holds a \(type) filesystem, expected ext4; not formatting it"
        case .formatFailed(let name, let device, let error):
            return "cannot create the \(name) filesystem on \(device): \(error)"
        case .mountFailed(let name, let error):
            return "cannot mount \(name): \(error)"
        }
    }
}

public enum DataPartitions {
    public static let configMount = "/config"
    public static let persistMount = "/persist"
    static let newLabel = "outpost-new"
    static let doneLabel = "persist"

    /// The CONFIG entry of the slot's disk, by type GUID (or name, for disks
    /// written by tools that only set names).
    public static func config(on disk: DiskInfo) -> PartitionInfo? {
        disk.partitions.first { $0.typeGUID == PartitionType.config }
            ?? disk.partitions.first { $0.name == "CONFIG" }
    }

    public static func persist(on disk: DiskInfo) -> PartitionInfo? {
        disk.partitions.first { $0.typeGUID == PartitionType.persist }
    }

    /// Mounts CONFIG read-only; its files hold keys, so only root may read them.
    public static func mountConfig(_ partition: PartitionInfo) throws(DataPartitionError) {
        do {
            try Sys.mkdir(configMount)
            try Sys.mount(source: partition.devicePath, target: configMount, type: "vfat",
                          flags: UInt(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC),
                          data: "fmask=0177,dmask=0077,utf8")
        } catch {
            throw .mountFailed(name: "CONFIG \(partition.devicePath) on \(configMount)", error)
        }
    }

    /// Mounts PERSIST read-write, first growing and formatting it if it has no
    /// filesystem. Returns warnings (growth is best effort) to print.
    public static func preparePersist(_ partition: PartitionInfo, disk: DiskInfo) throws(DataPartitionError) -> [String] {
        var warnings: [String] = []
        let device = partition.devicePath
        let signature: FilesystemSignature?
        do {
            signature = try BlockDevices.filesystem(devicePath: device)
        } catch {
            throw .probeFailed(name: "PERSIST \(device)", error)
        }
        // Growth is best effort: a PERSIST that keeps its factory size still works.
        var grew = false
        do {
            grew = try grow(partition, disk: disk)
        } catch {
            warnings.append("PERSIST \(device) was not grown to the end of \(disk.devicePath): \(error)")
        }
        switch signature {
        case nil:
            try format(device)
            grew = false
        case let found? where found.type == "ext4" && found.label == newLabel:
            try format(device)
        case let found? where found.type == "ext4":
            break
        case let found?:
            throw .foreignFilesystem(name: "PERSIST", device: device, type: found.type)
        }
        do {
            try Sys.mkdir(persistMount)
            try Sys.mount(source: device, target: persistMount, type: "ext4",
                          flags: UInt(MS_NOATIME | MS_NOSUID | MS_NODEV))
        } catch {
            throw .mountFailed(name: "PERSIST \(device) on \(persistMount)", error)
        }
        if grew {
            // ext4 grows online; a failure leaves the old size, which still works.
            do { try Subprocess.run(Subprocess.tool("resize2fs"), [device]) } catch {
                warnings.append("PERSIST \(device): \(GrowError.resize(error))")
            }
        }
        return warnings
    }

    static func format(_ device: String) throws(DataPartitionError) {
        do {
            try Subprocess.run(Subprocess.tool("mke2fs"), [
                "-q", "-F", "-t", "ext4", "-L", newLabel, "-m", "1",
                "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", device,
            ])
            try Subprocess.run(Subprocess.tool("tune2fs"), ["-L", doneLabel, device])
        } catch {
            throw .formatFailed(name: "PERSIST", device: device, error)
        }
    }

    /// Grows PERSIST, the last partition, to the end of the disk, so one
    /// factory image fits any disk size. The GPT is rewritten through
    /// OutpostDisk: the backup copy at the disk's new end first, then the
    /// primary, which is the only copy pointing at it. A power cut before the
    /// primary lands leaves the old table (and its old backup) intact, and the
    /// next boot simply grows again. The kernel learns the new size through
    /// BLKPG: the slot is in use, so a full re-read would fail with EBUSY.
    /// Returns whether the partition grew.
    static func grow(_ partition: PartitionInfo, disk: DiskInfo) throws(GrowError) -> Bool {
        let grown: GPTPartition
        do {
            let device = try FileBlockDevice(path: disk.devicePath, writable: true)
            let found = try GPTDisk.read(device)
            var gpt = found.gpt
            guard partition.number >= 1, partition.number <= gpt.entries.count,
                  gpt.entries[partition.number - 1].isUsed else { throw GrowError.notInTable(number: partition.number) }
            let entry = gpt.entries[partition.number - 1]
            // Only the last partition may grow; anything after it stays where it is.
            guard gpt.partitions.allSatisfy({ $0.partition.lastLBA <= entry.lastLBA }) else { return false }
            let backupLBA = device.sectorCount - 1
            let entrySectors = UInt64((gpt.entries.count * Int(gpt.entrySize) + 511) / 512)
            let lastUsable = backupLBA - entrySectors - 1
            let alignment: UInt64 = 2048   // keep the end on a 1 MiB boundary
            let newLast = (lastUsable + 1) / alignment * alignment - 1
            guard newLast > entry.lastLBA + alignment else { return false }
            gpt.lastUsableLBA = lastUsable
            gpt.entries[partition.number - 1].lastLBA = newLast
            try GPTDisk.write(gpt, to: device, backupLBA: backupLBA)
            grown = gpt.entries[partition.number - 1]
        } catch let e as GrowError {
            throw e
        } catch {
            throw .table(disk: disk.devicePath, "\(error)")
        }
        do {
            let fd = try Sys.open(disk.devicePath, O_RDONLY)
            defer { Sys.close(fd) }
            try systemCall("ioctl(BLKPG_RESIZE_PARTITION)", "\(disk.devicePath) partition \(partition.number)") {
                OutpostShims_blkpg_resize_partition(fd, Int32(partition.number),
                                                     Int64(grown.firstLBA * 512), Int64(grown.sectorCount * 512))
            }
        } catch {
            throw .kernel(error)
        }
        return true
    }

    public enum GrowError: Error, CustomStringConvertible {
        case table(disk: String, String)
        case notInTable(number: Int)
        case resize(SubprocessError)
        case kernel(SystemError)

        public var description: String {
            switch self {
            case .table(let disk, let why): return "GPT of \(disk): \(why)"
            case .notInTable(let n): return "partition \(n) is not in the GPT"
            case .resize(let error): return "resize2fs: \(error)"
            case .kernel(let error): return "\(error)"
            }
        }
    }
}
