#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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

/// A bundle file read with pread; EINTR retried, short reads completed.
public final class FilePayloadSource: PayloadSource {
    public let path: String
    public let size: UInt64
    private let fd: Int32

    public init(path: String) throws(BundleError) {
        self.path = path
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw .io(call: "open", path: path, errno: errno) }
        let end = lseek(fd, 0, SEEK_END)
        guard end >= 0 else {
            let e = errno
            close(fd)
            throw .io(call: "lseek", path: path, errno: e)
        }
        self.fd = fd
        size = UInt64(end)
    }

    deinit { close(fd) }

    public func read(offset: UInt64, count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        var done = 0
        try buf.withUnsafeMutableBytes { raw in
            guard let base = raw.baseAddress else { return }
            while done < count {
                let n = pread(fd, base + done, count - done, off_t(offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw BundleError.io(call: "pread", path: path, errno: errno)
                }
                if n == 0 {
                    throw BundleError.truncated(field: "read", offset: offset + UInt64(done),
                                                wanted: UInt64(count - done), available: 0)
                }
                done += n
            }
        }
        return buf
    }
}
