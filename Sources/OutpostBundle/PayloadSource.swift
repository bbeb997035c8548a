#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import OutpostDisk
import OutpostPlatform

// Where a bundle's bytes come from. Random access, so the reader can take the
// header, then the payload twice (verify pass, then write pass) without
// holding it in memory; an HTTP implementation maps reads to Range requests.

/// Random-access read-only bytes of known size: a bundle file, a download, a test buffer.
public protocol PayloadSource: AnyObject {
    var size: UInt64 { get }
    /// Exactly `count` bytes at `offset`, or a thrown error.
    func read(offset: UInt64, count: Int) throws -> [UInt8]
}

/// A bundle held in memory (tests, the simulator).
public final class MemoryPayloadSource: PayloadSource {
    public let bytes: [UInt8]
    public var size: UInt64 { UInt64(bytes.count) }

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(offset: UInt64, count: Int) throws -> [UInt8] {
        guard count >= 0, offset <= size, UInt64(count) <= size - offset else {
            throw BundleError.truncated(field: "read", offset: offset, wanted: UInt64(max(count, 0)),
                                        available: offset <= size ? size - offset : 0)
        }
        return Array(bytes[Int(offset)..<Int(offset) + count])
    }
}

/// A bundle file, read through OutpostDisk's FileBlockDevice (pread, EINTR
/// retried, short reads completed) with its errors put in bundle terms.
public final class FilePayloadSource: PayloadSource {
    public let path: String
    public var size: UInt64 { file.sectorCount }
    private let file: FileBlockDevice

    public init(path: String) throws(BundleError) {
        self.path = path
        do { file = try FileBlockDevice(path: path, writable: false, sectorSize: 1) } catch {
            throw Self.translate(error, path: path, offset: 0, count: 0)
        }
    }

    public func read(offset: UInt64, count: Int) throws -> [UInt8] {
        do { return try file.readBytes(offset: offset, count: count) } catch {
            throw Self.translate(error, path: path, offset: offset, count: count)
        }
    }

    static func translate(_ error: Error, path: String, offset: UInt64, count: Int) -> BundleError {
        switch error as? BlockDeviceError {
        case let .system(error)?:
            return .system(error)
        case let .outOfRange(at, _)?:
            // With 1-byte sectors the "LBA" is the byte offset where data ran out.
            let wanted = offset + UInt64(count) > at ? offset + UInt64(count) - at : 0
            return .truncated(field: "read", offset: at, wanted: wanted, available: 0)
        default:
            return .system(SystemError(call: "read", object: path, errno: .ioError))
        }
    }
}
