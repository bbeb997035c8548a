// Thin, throwing wrappers over the Linux calls early boot needs.
//
// Every wrapper retries EINTR (PID 1 receives signals at any time) and throws
// a `SystemError` naming the call, the object it acted on and the errno,
// so that the single console line a failure produces says what and where.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform
import OutpostShims

/// File-level calls used by early boot and PID 1.
public enum Sys {
    public static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0) throws(SystemError) -> Int32 {
        try systemCall("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    public static func close(_ fd: Int32) {
        // close() must not be retried on EINTR on Linux: the fd is already gone.
        _ = Glibc.close(fd)
    }

    /// Reads into `buffer`, returning the byte count (0 at end of file).
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64? = nil,
                     target: String) throws(SystemError) -> Int {
        try systemCall(offset == nil ? "read" : "pread", target) {
            if let offset {
                return Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            }
            return Glibc.read(fd, buffer.baseAddress, buffer.count)
        }
    }

    /// Writes all of `bytes`, looping over short writes.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], target: String) throws(SystemError) {
        try FileIO.writeAll(fd, bytes, object: target)
    }

    /// The whole content of a small file (procfs, sysfs, /etc).
    public static func readFile(_ path: String, limit: Int = 1 << 20) throws(SystemError) -> [UInt8] {
        try FileIO.read(path, limit: limit)
    }

    public static func readText(_ path: String) throws(SystemError) -> String {
        String(decoding: try readFile(path), as: UTF8.self)
    }

    public static func mkdir(_ path: String, _ mode: mode_t = 0o755) throws(SystemError) {
        if Glibc.mkdir(path, mode) == 0 { return }
        let code = errno
        if code == EEXIST { return }
        throw SystemError(call: "mkdir", object: path, code: code)
    }

    public static func mount(source: String, target: String, type: String, flags: UInt, data: String? = nil) throws(SystemError) {
        try systemCall("mount", "\(type) \(source) on \(target)") {
            if let data { return Glibc.mount(source, target, type, flags, data) }
            return Glibc.mount(source, target, type, flags, nil)
        }
    }

    /// Moves an existing mount (MS_MOVE) — how /dev, /proc and /sys follow into the new root.
    public static func moveMount(_ source: String, to target: String) throws(SystemError) {
        try systemCall("mount(MS_MOVE)", "\(source) to \(target)") {
            Glibc.mount(source, target, nil, UInt(MS_MOVE), nil)
        }
    }

    public static func unmount(_ path: String, flags: Int32 = 0) throws(SystemError) {
        try systemCall("umount", path) { Glibc.umount2(path, flags) }
    }

    public static func chdir(_ path: String) throws(SystemError) {
        try systemCall("chdir", path) { Glibc.chdir(path) }
    }

    public static func chroot(_ path: String) throws(SystemError) {
        try systemCall("chroot", path) { Glibc.chroot(path) }
    }

    public static func mknodBlock(_ path: String, major: UInt32, minor: UInt32) throws(SystemError) {
        let dev = dev_t(OutpostShims_makedev(major, minor))
        if Glibc.mknod(path, S_IFBLK | 0o600, dev) == 0 { return }
        let code = errno
        if code == EEXIST { return }
        throw SystemError(call: "mknod", object: path, code: code)
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Names in a directory, without "." and "..", sorted for deterministic scans.
    public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else {
            throw SystemError(call: "opendir", object: path, code: errno)
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
}

/// Wall-clock seconds since the epoch, for records a person reads later
/// (timeouts and intervals use `MonotonicClock`).
public func wallClockSeconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec)
}
