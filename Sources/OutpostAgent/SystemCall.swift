// Thin, throwing wrappers over the Linux calls early boot needs.
//
// Every wrapper retries EINTR (PID 1 receives signals at any time) and throws
// a `SystemCallError` naming the call, the object it acted on and the errno,
// so that the single console line a failure produces says what and where.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostShims

/// A failed system call: which call, on what, and the errno it returned.
public struct SystemCallError: Error, Equatable, CustomStringConvertible {
    public var call: String
    public var target: String
    public var errno: Int32

    public init(call: String, target: String, errno: Int32) {
        self.call = call
        self.target = target
        self.errno = errno
    }

    public var description: String {
        "\(call)(\(target)): \(errnoName(errno))"
    }
}

/// The symbolic name of an errno ("ENOENT"), with strerror text, for console lines.
public func errnoName(_ code: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", ENXIO: "ENXIO", EBADF: "EBADF",
        ENOMEM: "ENOMEM", EACCES: "EACCES", EBUSY: "EBUSY", EEXIST: "EEXIST",
        ENODEV: "ENODEV", ENOTDIR: "ENOTDIR", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
        EROFS: "EROFS", ENOEXEC: "ENOEXEC", ENOSYS: "ENOSYS", ENOTBLK: "ENOTBLK",
        EUCLEAN: "EUCLEAN", EBADMSG: "EBADMSG", ENOKEY: "ENOKEY", EKEYREJECTED: "EKEYREJECTED",
    ]
    let text: String
    if let message = strerror(code) {
        text = String(cString: message)
    } else {
        text = "errno \(code)"
    }
    return "\(names[code] ?? "errno \(code)") (\(text))"
}

/// Runs `body` until it stops failing with EINTR; a negative result becomes an error.
@discardableResult
func retrying<T: BinaryInteger>(_ call: String, _ target: String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SystemCallError(call: call, target: target, errno: code)
    }
}

/// File-level calls used by early boot and PID 1.
enum Sys {
    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0) throws(SystemCallError) -> Int32 {
        try retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    static func close(_ fd: Int32) {
        // close() must not be retried on EINTR on Linux: the fd is already gone.
        _ = Glibc.close(fd)
    }

    /// Reads into `buffer`, returning the byte count (0 at end of file).
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64? = nil,
                     target: String) throws(SystemCallError) -> Int {
        try retrying(offset == nil ? "read" : "pread", target) {
            if let offset {
                return Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            }
            return Glibc.read(fd, buffer.baseAddress, buffer.count)
        }
    }

    /// Writes all of `bytes`, looping over short writes.
    static func writeAll(_ fd: Int32, _ bytes: [UInt8], target: String) throws(SystemCallError) {
        var done = 0
        while done < bytes.count {
            let count = try retrying("write", target) {
                bytes.withUnsafeBytes { raw in Glibc.write(fd, raw.baseAddress.map { $0 + done }, raw.count - done) }
            }
            done += count
        }
    }

    /// The whole content of a small file (procfs, sysfs, /etc).
    static func readFile(_ path: String, limit: Int = 1 << 20) throws(SystemCallError) -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let count = try retrying("read", path) {
                chunk.withUnsafeMutableBytes { raw in Glibc.read(fd, raw.baseAddress, raw.count) }
            }
            if count == 0 { break }
            out.append(contentsOf: chunk[0..<count])
        }
        return out
    }

    static func readText(_ path: String) throws(SystemCallError) -> String {
        String(decoding: try readFile(path), as: UTF8.self)
    }

    static func mkdir(_ path: String, _ mode: mode_t = 0o755) throws(SystemCallError) {
        if Glibc.mkdir(path, mode) == 0 { return }
        let code = errno
        if code == EEXIST { return }
        throw SystemCallError(call: "mkdir", target: path, errno: code)
    }

    static func mount(source: String, target: String, type: String, flags: UInt, data: String? = nil) throws(SystemCallError) {
        try retrying("mount", "\(type) \(source) on \(target)") {
            if let data { return Glibc.mount(source, target, type, flags, data) }
            return Glibc.mount(source, target, type, flags, nil)
        }
    }

    /// Moves an existing mount (MS_MOVE) — how /dev, /proc and /sys follow into the new root.
    static func moveMount(_ source: String, to target: String) throws(SystemCallError) {
        try retrying("mount(MS_MOVE)", "\(source) to \(target)") {
            Glibc.mount(source, target, nil, UInt(MS_MOVE), nil)
        }
    }

    static func unmount(_ path: String, flags: Int32 = 0) throws(SystemCallError) {
        try retrying("umount", path) { Glibc.umount2(path, flags) }
    }

    static func chdir(_ path: String) throws(SystemCallError) {
        try retrying("chdir", path) { Glibc.chdir(path) }
    }

    static func chroot(_ path: String) throws(SystemCallError) {
        try retrying("chroot", path) { Glibc.chroot(path) }
    }

    static func mknodBlock(_ path: String, major: UInt32, minor: UInt32) throws(SystemCallError) {
        let dev = dev_t(OutpostShims_makedev(major, minor))
        if Glibc.mknod(path, S_IFBLK | 0o600, dev) == 0 { return }
        let code = errno
        if code == EEXIST { return }
        throw SystemCallError(call: "mknod", target: path, errno: code)
    }

    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Names in a directory, without "." and "..", sorted for deterministic scans.
    static func listDirectory(_ path: String) throws(SystemCallError) -> [String] {
        guard let dir = opendir(path) else {
            throw SystemCallError(call: "opendir", target: path, errno: errno)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Sleeps for `milliseconds`, resuming after signal interruptions.
    static func sleep(milliseconds: Int) {
        var request = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR {
            request = remaining
        }
    }

    /// Monotonic milliseconds, for bounded waits and boot timing.
    static func monotonicMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
