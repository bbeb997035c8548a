// A file as a block device, without losetup (the slot has none).
//
//   /dev/loop-control --LOOP_CTL_GET_FREE--> N
//   /dev/loopN        --LOOP_CONFIGURE(fd of the file, AUTOCLEAR)--> bound
//
// The loop device is bound with LO_FLAGS_AUTOCLEAR: the kernel detaches the
// file when the last opener closes the device. The vault keeps the loop
// device open only until dm-crypt holds it, so removing the mapping (or
// outpostd dying) detaches the file without a separate step that could be
// forgotten.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import OutpostEarlyBoot

/// A loop device bound to a file, still held open by this process through `fd`.
struct LoopDevice: Sendable {
    /// N in /dev/loopN.
    var number: Int32
    var path: String
    var major: UInt32
    var minor: UInt32
    /// Open read-write; closing it (while nothing else holds the device) detaches the file.
    var fd: Int32

    /// How often a free loop device is asked for again when another process
    /// bound it between LOOP_CTL_GET_FREE and LOOP_CONFIGURE (EBUSY).
    static let attachAttempts = 8

    /// Binds the open file `backingFD` (named `backingPath` in errors) to a free loop device.
    static func attach(backingFD: Int32, backingPath: String) throws(SystemError) -> LoopDevice {
        let control = try openLoopControl()
        defer { Sys.close(control) }
        var lastError = SystemError(call: "ioctl(LOOP_CONFIGURE)", object: backingPath, code: EBUSY)
        for _ in 0..<attachAttempts {
            let number = try systemCall("ioctl(LOOP_CTL_GET_FREE)", "/dev/loop-control") {
                OutpostShims_loop_get_free(control)
            }
            let path = "/dev/loop\(number)"
            try ensureNode(path, number: number)
            let fd = try Sys.open(path, O_RDWR)
            var status = stat()
            guard fstat(fd, &status) == 0 else {
                let error = SystemError.current("fstat", path)
                Sys.close(fd)
                throw error
            }
            do {
                try systemCall("ioctl(LOOP_CONFIGURE)", "\(path) with \(backingPath)") {
                    OutpostShims_loop_configure(fd, backingFD, 1)
                }
            } catch {
                Sys.close(fd)
                if error.code == EBUSY { lastError = error; continue }
                throw error
            }
            let device = UInt64(status.st_rdev)
            return LoopDevice(number: number, path: path, major: OutpostShims_major(device),
                              minor: OutpostShims_minor(device), fd: fd)
        }
        throw lastError
    }

    /// The file the kernel says loop device `number` is bound to, or nil when it is free.
    static func backingFile(number: Int32) -> String? {
        guard let bytes = try? FileIO.readIfPresent("/sys/block/loop\(number)/loop/backing_file") else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        let trimmed = text.hasSuffix("\n") ? String(text.dropLast()) : text
        return trimmed.isEmpty ? nil : trimmed
    }

    /// Closes this process's handle; with AUTOCLEAR the file is detached once
    /// nothing else (dm-crypt) holds the device.
    func closeHandle() {
        Sys.close(fd)
    }

    /// Detaches now if nothing holds the device, else as soon as the last
    /// holder lets go; then closes this handle. Used when setup failed before
    /// dm-crypt took the device.
    func detach() {
        _ = OutpostShims_loop_clear(fd)
        Sys.close(fd)
    }

    /// Waits (bounded) until loop device `number` no longer has a backing
    /// file; AUTOCLEAR detaches as the last holder closes, which on some
    /// kernels finishes on a work queue a moment later. As a last resort it
    /// asks for LOOP_CLR_FD itself. Returns whether the device is free.
    static func waitUntilDetached(number: Int32, path: String, timeout: Duration = .seconds(5)) -> Bool {
        let deadline = Deadline(after: timeout)
        var askedToClear = false
        while backingFile(number: number) != nil {
            if deadline.hasPassed { return false }
            if !askedToClear, let fd = try? Sys.open(path, O_RDONLY) {
                _ = OutpostShims_loop_clear(fd)
                Sys.close(fd)
                askedToClear = true
            }
            usleep(20_000)
        }
        return true
    }

    static func openLoopControl() throws(SystemError) -> Int32 {
        let path = "/dev/loop-control"
        if !Sys.exists(path),
           let (major, minor) = BlockDevices.deviceNumbers(sysfsDir: "/sys/class/misc/loop-control") {
            // devtmpfs creates it when the loop module registers; recreate it if it went away.
            if Glibc.mknod(path, S_IFCHR | 0o600, dev_t(OutpostShims_makedev(major, minor))) != 0 && errno != EEXIST {
                throw SystemError.current("mknod", path)
            }
        }
        return try Sys.open(path, O_RDWR)
    }

    /// devtmpfs adds /dev/loopN when LOOP_CTL_GET_FREE creates the device; a
    /// /dev without devtmpfs gets the node from sysfs.
    static func ensureNode(_ path: String, number: Int32) throws(SystemError) {
        if Sys.exists(path) { return }
        guard let (major, minor) = BlockDevices.deviceNumbers(sysfsDir: "/sys/block/loop\(number)") else {
            throw SystemError(call: "stat", object: "/sys/block/loop\(number)/dev", code: ENOENT)
        }
        try Sys.mknodBlock(path, major: major, minor: minor)
    }
}
