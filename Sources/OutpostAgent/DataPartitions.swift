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
import OutpostShims

/// Why CONFIG or PERSIST could not be brought up.
public enum DataPartitionError: Error, Equatable, CustomStringConvertible {
    case missing(name: String, disk: String)
    case probeFailed(name: String, SystemCallError)
    case foreignFilesystem(name: String, device: String, type: String)
    case formatFailed(name: String, device: String, SubprocessError)
    case mountFailed(name: String, SystemCallError)

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
        switch signature {
        case nil:
            do {
                try grow(partition, disk: disk)
            } catch {
                warnings.append("PERSIST \(device) was not grown to the end of \(disk.devicePath): \(error)")
            }
            try format(device)
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

    /// Grows the last partition to the end of the disk. Interim approach until
    /// the agent writes the GPT itself through OutpostDisk: sfdisk moves the
    /// backup GPT to the disk's end and extends the entry, then the kernel is
    /// told about the new size with BLKPG (the slot is in use, so a full
    /// partition table re-read would fail with EBUSY).
    static func grow(_ partition: PartitionInfo, disk: DiskInfo) throws(GrowError) {
        let tool = Subprocess.tool("sfdisk")
        do {
            try Subprocess.run(tool, ["--quiet", "--relocate", "gpt-bak-std", disk.devicePath])
            try Subprocess.run(tool, ["--quiet", "--force", "--no-reread", "--no-tell-kernel",
                                      "-N", "\(partition.number)", disk.devicePath], input: ",+\n")
        } catch {
            throw .tool(error)
        }
        guard let reread = BlockDevices.readDisk(name: disk.name),
              let grown = reread.partitions.first(where: { $0.number == partition.number }) else {
            throw .tableUnreadable(disk: disk.devicePath)
        }
        guard grown.sectorCount > partition.sectorCount else { return }
        do {
            let fd = try Sys.open(disk.devicePath, O_RDONLY)
            defer { Sys.close(fd) }
            try retrying("ioctl(BLKPG_RESIZE_PARTITION)", "\(disk.devicePath) partition \(partition.number)") {
                OutpostShims_blkpg_resize_partition(fd, Int32(partition.number),
                                                     Int64(grown.startSector * 512), Int64(grown.sectorCount * 512))
            }
        } catch {
            throw .kernel(error)
        }
    }

    public enum GrowError: Error, CustomStringConvertible {
        case tool(SubprocessError)
        case tableUnreadable(disk: String)
        case kernel(SystemCallError)

        public var description: String {
            switch self {
            case .tool(let error): return "\(error)"
            case .tableUnreadable(let disk): return "cannot re-read the GPT of \(disk)"
            case .kernel(let error): return "\(error)"
            }
        }
    }
}
