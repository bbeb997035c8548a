// Whole-file reads and the one crash-safe file replacement on the device.
//
// The device build has no FileManager, and the files that matter (update
// state, last-known-good network config, boot records) must survive a power
// cut at any instant: after it, the old file or the new one is there, never a
// torn mix and never nothing.
//
//   write  dir/.name.tmp-PID-N   (mode as asked)
//   fsync  the temp file         data on disk before the name points at it
//   rename temp -> dir/name      atomic within one directory
//   fsync  dir                   the rename itself survives the power cut

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

public enum FileIO {
    /// The whole content of a file (procfs, sysfs, /etc, state files). At most
    /// `limit` bytes are accepted; a longer file fails with EFBIG, so a
    /// corrupted or hostile file cannot exhaust memory.
    public static func read(_ path: String, limit: Int = 1 << 20) throws(SystemError) -> [UInt8] {
        let fd = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { _ = close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = try systemCall("read", path) {
                chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            }
            if count == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<count])
            if bytes.count > limit { throw SystemError(call: "read", object: path, errno: .fileTooLarge) }
        }
    }

    /// The file's content, or nil when it does not exist (ENOENT); every other
    /// failure is thrown.
    public static func readIfPresent(_ path: String, limit: Int = 1 << 20) throws(SystemError) -> [UInt8]? {
        do throws(SystemError) {
            return try read(path, limit: limit)
        } catch where error.errno == .noSuchFileOrDirectory && error.call == "open" {
            return nil
        }
    }

    /// Writes all of `bytes` to `fd`, looping over short writes; `object`
    /// names the fd in the error.
    public static func writeAll(_ fd: Int32, _ bytes: some Collection<UInt8>, object: String) throws(SystemError) {
        // withUnsafeBytes rethrows untyped errors; carry the typed one out as a Result.
        func write(_ buffer: UnsafeRawBufferPointer) -> Result<Void, SystemError> {
            do throws(SystemError) { return .success(try writeAll(fd, buffer, object: object)) } catch { return .failure(error) }
        }
        let outcome = bytes.withContiguousStorageIfAvailable { write(UnsafeRawBufferPointer($0)) }
            ?? Array(bytes).withUnsafeBytes { write($0) }
        try outcome.get()
    }

    /// Writes the whole buffer, looping over short writes.
    public static func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, object: String) throws(SystemError) {
        guard let base = buffer.baseAddress else { return }
        var offset = 0
        while offset < buffer.count {
            let written = try systemCall("write", object) { Glibc.write(fd, base + offset, buffer.count - offset) }
            // A regular file or pipe never accepts zero bytes of a non-empty write; treat it as EIO.
            if written == 0 { throw SystemError(call: "write", object: object, errno: .ioError) }
            offset += written
        }
    }

    /// Replaces `path` with `bytes` so that a power cut at any point leaves
    /// either the old content or the new, with `mode` as the file's permissions.
    public static func writeAtomically(_ bytes: some Collection<UInt8>, to path: String,
                                       mode: mode_t = 0o644) throws(SystemError) {
        let (directory, name) = split(path)
        // Unique per process and call: two threads replacing the same file
        // never write into one temp file; the last rename wins whole.
        let serial = temporarySerial.add(1, ordering: .relaxed).newValue
        let temp = "\(directory == "/" ? "" : directory)/.\(name).tmp-\(getpid())-\(serial)"
        // O_TRUNC, not O_EXCL: a file of this name can only be left over from a
        // process that died mid-write (PID 1 has the same pid every boot), and
        // it must not block the next write.
        let fd = try systemCall("open", temp) { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        do throws(SystemError) {
            // The umask may have narrowed `mode`; the caller asked for exactly it.
            try systemCall("fchmod", temp) { fchmod(fd, mode) }
            try writeAll(fd, bytes, object: temp)
            try systemCall("fsync", temp) { fsync(fd) }
        } catch {
            _ = close(fd)
            _ = unlink(temp)
            throw error
        }
        _ = close(fd)
        do throws(SystemError) {
            try systemCall("rename", "\(temp) to \(path)") { rename(temp, path) }
        } catch {
            _ = unlink(temp)
            throw error
        }
        let directoryFD = try systemCall("open", directory) { open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { _ = close(directoryFD) }
        try systemCall("fsync", directory) { fsync(directoryFD) }
    }

    /// Writes a small value into an existing file in place: /proc/sys and
    /// sysfs knobs, where a rename is impossible and one write is the protocol.
    public static func writeInPlace(_ text: String, to path: String) throws(SystemError) {
        let fd = try systemCall("open", path) { open(path, O_WRONLY | O_CLOEXEC) }
        defer { _ = close(fd) }
        try writeAll(fd, Array(text.utf8), object: path)
    }

    /// The directory and the last component of `path` ("." for a bare name).
    static func split(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let directory = String(path[..<slash])
        return (directory.isEmpty ? "/" : directory, String(path[path.index(after: slash)...]))
    }

    private static let temporarySerial = Atomic<Int>(0)
}
