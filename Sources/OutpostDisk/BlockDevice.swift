import OutpostPlatform

// The only I/O the on-disk contract does goes through this protocol, so the
// same GPT code runs on a real disk (agent), an image file (builder) and a
// simulated disk that loses power after k writes (power-cut tests).

/// A device addressed in fixed-size sectors.
public protocol BlockDevice: AnyObject {
    var sectorSize: Int { get }
    var sectorCount: UInt64 { get }
    /// Reads `count` whole sectors starting at `lba`.
    func read(lba: UInt64, count: Int) throws -> [UInt8]
    /// Writes whole sectors starting at `lba`; `bytes.count` is a multiple of `sectorSize`.
    func write(lba: UInt64, bytes: [UInt8]) throws
    /// Makes every completed write durable.
    func flush() throws
    /// A write in a long sequential run (an update payload). Devices that can
    /// bypass the page cache do; the data is durable only after `flush`.
    func writeBulk(lba: UInt64, bytes: [UInt8]) throws
}

extension BlockDevice {
    public func writeBulk(lba: UInt64, bytes: [UInt8]) throws { try write(lba: lba, bytes: bytes) }
}

/// A block device held in memory: for unit tests and the power-cut simulator.
public final class MemoryBlockDevice: BlockDevice {
    public let sectorSize: Int
    public private(set) var storage: [UInt8]
    public var sectorCount: UInt64 { UInt64(storage.count / sectorSize) }

    public init(sectorCount: Int, sectorSize: Int = 512) {
        self.sectorSize = sectorSize
        storage = [UInt8](repeating: 0, count: sectorCount * sectorSize)
    }

    public init(bytes: [UInt8], sectorSize: Int = 512) {
        self.sectorSize = sectorSize
        storage = bytes
    }

    public func read(lba: UInt64, count: Int) throws -> [UInt8] {
        let start = Int(lba) * sectorSize, end = start + count * sectorSize
        guard lba < sectorCount, end <= storage.count else { throw BlockDeviceError.outOfRange(lba: lba, count: count) }
        return Array(storage[start..<end])
    }

    public func write(lba: UInt64, bytes: [UInt8]) throws {
        let start = Int(lba) * sectorSize
        guard bytes.count % sectorSize == 0, lba < sectorCount, start + bytes.count <= storage.count else {
            throw BlockDeviceError.outOfRange(lba: lba, count: bytes.count / sectorSize)
        }
        storage.replaceSubrange(start..<start + bytes.count, with: bytes)
    }

    public func flush() throws {}
}

/// Errors a block device reports.
public enum BlockDeviceError: Error, Equatable, CustomStringConvertible {
    case outOfRange(lba: UInt64, count: Int)
    /// A read, write, open or flush failed in the kernel.
    case system(SystemError)
    case powerCut(afterWrites: Int)

    public var description: String {
        switch self {
        case let .outOfRange(lba, count): return "access of \(count) sectors at LBA \(lba) is outside the device"
        case let .system(error): return error.description
        case let .powerCut(n): return "power cut after \(n) writes"
        }
    }
}
