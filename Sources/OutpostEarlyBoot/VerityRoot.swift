// Builds the verified root device out of the slot partition:
//
//   slot partition (/dev/vda2)
//   +-----------+---------------------------+--------------+
//   | boot sqfs | root squashfs  [R, R+D*4K) | hash tree @H |
//   +-----------+---------------------------+--------------+
//                 |                                 |
//   outpost-root-data = dm-linear over [R, R+D*4K)  |
//                 |                                 |
//   outpost-root  = dm-verity(data: outpost-root-data, hash: slot @ H)
//
// dm-verity needs the data to start at sector 0 of its data device, hence the
// linear mapping; the hash tree is read straight from the slot partition.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import Synchronization

/// The mapped device that carries the verified root, ready to mount.
public struct VerityDevice: Equatable, Sendable {
    public var name: String
    public var path: String
    public var major: UInt32
    public var minor: UInt32
    public var sizeBytes: UInt64
}

/// A read of the verified root failed: dm-verity found a block whose hash
/// does not match the tree (EIO), or the disk itself failed.
public struct VerityReadError: Error, Equatable {
    public var device: String
    public var offset: UInt64
    public var errno: Int32
}

public enum VerityRoot {
    public static let dataName = "outpost-root-data"
    public static let verityName = "outpost-root"
    static let sector: UInt64 = 512
    /// What `setUp` needs loaded (when they are modules, not built in).
    public static let modules = ["dm_mod", "dm_verity"]

    /// Creates outpost-root-data and outpost-root for the slot and returns
    /// the verity device. On failure it removes whatever it created, so a
    /// retry (or the error path) leaves no half-built mapping behind.
    public static func setUp(slot: PartitionInfo, parameters: BootParameters) throws(SystemError) -> VerityDevice {
        let control = try openControl()
        defer { Sys.close(control) }

        let dataSectors = parameters.rootBlocks * BootParameters.blockSize / sector
        let linearTable = "\(slot.major):\(slot.minor) \(parameters.rootOffset / sector)"
        let data = try createDevice(control: control, name: dataName, target: "linear",
                                    sectors: dataSectors, table: linearTable)
        let verityTable = [
            "1",                                   // on-disk format version 1
            "\(data.major):\(data.minor)",         // data device
            "\(slot.major):\(slot.minor)",         // hash device
            "4096", "4096",                        // data and hash block size
            "\(parameters.rootBlocks)",            // data blocks
            "\(parameters.hashOffset / BootParameters.blockSize)", // hash start, in hash blocks
            "sha256", parameters.rootHash, parameters.salt,
        ].joined(separator: " ")
        do {
            var root = try createDevice(control: control, name: verityName, target: "verity",
                                        sectors: dataSectors, table: verityTable)
            root.sizeBytes = dataSectors * sector
            return root
        } catch {
            _ = OutpostShims_dm_remove(control, dataName)
            throw error
        }
    }

    /// Reads the whole verity device once so that every block's hash is
    /// checked now, at boot, rather than when some file is first read weeks
    /// later: a corrupt slot then fails before it is reported ready and before
    /// the update flow could commit it.
    /// The device is read in `parts` ranges side by side, each on a thread of
    /// its own: dm-verity hashes each read's blocks on the CPU that asked, so
    /// one reader keeps one CPU hashing. The error of the lowest offset wins.
    public static func verifyAllBlocks(_ device: VerityDevice, parts: Int = KernelModules.workers) throws(VerityReadError) {
        let chunk: UInt64 = 1 << 20
        let chunks = (device.sizeBytes + chunk - 1) / chunk
        let perPart = (chunks + UInt64(max(1, parts)) - 1) / UInt64(max(1, parts))
        let ranges = stride(from: UInt64(0), to: chunks, by: Int(max(1, perPart))).map { first in
            (first * chunk)..<min(device.sizeBytes, (first + perPart) * chunk)
        }
        let errors = Mutex<[VerityReadError]>([])
        let read = { @Sendable (range: Range<UInt64>) in
            do throws(VerityReadError) { try verify(device, range, chunk: Int(chunk)) } catch { errors.withLock { $0.append(error) } }
        }
        // The first range on this thread, the others on threads of their own (or here, without one).
        let threads = ranges.dropFirst().compactMap { range in
            (try? NamedThread.start(name: "verity") { read(range) }) ?? { read(range); return nil }()
        }
        ranges.first.map(read)
        for thread in threads { thread.join() }
        if let error = errors.withLock({ $0 }).min(by: { $0.offset < $1.offset }) { throw error }
    }

    /// Reads `range` of the device, `chunk` bytes at a time.
    static func verify(_ device: VerityDevice, _ range: Range<UInt64>, chunk: Int) throws(VerityReadError) {
        let fd: Int32
        do {
            fd = try Sys.open(device.path, O_RDONLY)
        } catch {
            throw VerityReadError(device: device.path, offset: range.lowerBound, errno: error.code)
        }
        defer { Sys.close(fd) }
        guard let buffer = UnsafeMutableRawPointer.allocateIfPossible(byteCount: chunk, alignment: 4096) else {
            throw VerityReadError(device: device.path, offset: range.lowerBound, errno: ENOMEM)
        }
        defer { free(buffer) }
        var offset = range.lowerBound
        while offset < range.upperBound {
            let want = Int(min(UInt64(chunk), range.upperBound - offset))
            let count: Int
            do {
                count = try Sys.read(fd, into: UnsafeMutableRawBufferPointer(start: buffer, count: want),
                                     at: offset, target: device.path)
            } catch {
                throw VerityReadError(device: device.path, offset: offset, errno: error.code)
            }
            if count == 0 { throw VerityReadError(device: device.path, offset: offset, errno: EIO) }
            offset += UInt64(count)
        }
    }

    public static func openControl() throws(SystemError) -> Int32 {
        let path = "/dev/mapper/control"
        if !Sys.exists(path) {
            // devtmpfs normally creates it when dm_mod registers; recreate it
            // from sysfs if an earlier step removed /dev/mapper.
            try Sys.mkdir("/dev/mapper")
            if let (major, minor) = BlockDevices.deviceNumbers(sysfsDir: "/sys/class/misc/device-mapper") {
                if Glibc.mknod(path, S_IFCHR | 0o600, dev_t(OutpostShims_makedev(major, minor))) != 0 && errno != EEXIST {
                    throw SystemError(call: "mknod", object: path, code: errno)
                }
            }
        }
        return try Sys.open(path, O_RDWR)
    }

    /// DM_DEV_CREATE + DM_TABLE_LOAD (read-only) + resume, then a node under /dev/mapper.
    static func createDevice(control: Int32, name: String, target: String, sectors: UInt64,
                             table: String) throws(SystemError) -> VerityDevice {
        var major: UInt32 = 0
        var minor: UInt32 = 0
        try systemCall("DM_DEV_CREATE", name) { OutpostShims_dm_create(control, name, nil, &major, &minor) }
        do {
            try systemCall("DM_TABLE_LOAD", "\(name): \(target) \(table)") {
                OutpostShims_dm_load_table(control, name, 0, sectors, target, table, 1)
            }
            try systemCall("DM_DEV_SUSPEND(resume)", name) { OutpostShims_dm_resume(control, name) }
            let path = "/dev/mapper/\(name)"
            try Sys.mkdir("/dev/mapper")
            try Sys.mknodBlock(path, major: major, minor: minor)
            return VerityDevice(name: name, path: path, major: major, minor: minor, sizeBytes: sectors * sector)
        } catch {
            _ = OutpostShims_dm_remove(control, name)
            throw error
        }
    }
}

extension UnsafeMutableRawPointer {
    /// Page-aligned buffer for block reads; nil instead of a crash if memory is short.
    static func allocateIfPossible(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        var pointer: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&pointer, alignment, byteCount) == 0 else { return nil }
        return pointer
    }
}
