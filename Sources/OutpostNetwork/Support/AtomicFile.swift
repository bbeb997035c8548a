import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// Why a file could not be read or replaced; names the call and the path.
public struct FileError: Error, Equatable, CustomStringConvertible {
    public let call: String
    public let path: String
    public let errno: Int32
    public var description: String { "\(call) \(path): \(errnoText(errno))" }
}

/// Whole-file reads and crash-safe replacement with plain system calls, since the device
/// build has no FileManager: write a temp file, fsync, rename over, fsync the directory,
/// so a power cut leaves the old file or the new one, never a torn mix.
enum AtomicFile {
    /// The file's bytes, or nil when it does not exist; at most `limit` bytes are accepted.
    static func read(_ path: String, limit: Int = 1 << 20) throws(FileError) -> Data? {
        let fd = retryingEINTR { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw FileError(call: "open", path: path, errno: errno)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = retryingEINTR { buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }
            if n < 0 { throw FileError(call: "read", path: path, errno: errno) }
            if n == 0 { break }
            bytes += buffer[0..<n]
            if bytes.count > limit { throw FileError(call: "read", path: path, errno: EFBIG) }
        }
        return Data(bytes)
    }

    static func write(_ data: Data, to path: String, mode: mode_t = 0o644) throws(FileError) {
        let temp = path + ".tmp"
        let fd = retryingEINTR { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        guard fd >= 0 else { throw FileError(call: "open", path: temp, errno: errno) }
        var failure: FileError?
        data.withUnsafeBytes { buf in
            guard let base = buf.baseAddress else { return }
            var offset = 0
            while offset < buf.count {
                let n = retryingEINTR { Glibc.write(fd, base + offset, buf.count - offset) }
                if n <= 0 { failure = FileError(call: "write", path: temp, errno: n < 0 ? errno : EIO); return }
                offset += n
            }
        }
        if failure == nil && retryingEINTR({ fsync(fd) }) != 0 { failure = FileError(call: "fsync", path: temp, errno: errno) }
        close(fd)
        if let failure { unlink(temp); throw failure }
        guard rename(temp, path) == 0 else {
            let e = errno
            unlink(temp)
            throw FileError(call: "rename", path: path, errno: e)
        }
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let dirFD = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 { _ = retryingEINTR { fsync(dirFD) }; close(dirFD) }
    }

    /// Writes a small file in place (for /proc/sys), where rename is impossible.
    static func writeInPlace(_ text: String, to path: String) throws(FileError) {
        let fd = retryingEINTR { open(path, O_WRONLY | O_CLOEXEC) }
        guard fd >= 0 else { throw FileError(call: "open", path: path, errno: errno) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let n = retryingEINTR { bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }
        guard n == bytes.count else { throw FileError(call: "write", path: path, errno: n < 0 ? errno : EIO) }
    }
}
