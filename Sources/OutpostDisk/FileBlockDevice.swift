// A block device backed by a file descriptor: an image file on the build
// host, or /dev/vda on the device. pread/pwrite at explicit offsets, EINTR
// retried, short transfers completed, errors naming the call and the path.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform

/// A file or block special file opened for sector I/O.
public final class FileBlockDevice: BlockDevice {
    public let path: String
    public let sectorSize: Int
    public let sectorCount: UInt64
    private let fd: Int32
    private let writable: Bool
    /// For `writeBulk`: an O_DIRECT descriptor and a page-aligned bounce
    /// buffer, opened on first use; nil after O_DIRECT was refused.
    private var direct: (fd: Int32, buffer: UnsafeMutableRawPointer, capacity: Int)?
    private var directRefused = false

    /// Opens `path`; the size comes from lseek(SEEK_END), which works for both
    /// regular files and block devices.
    public init(path: String, writable: Bool, sectorSize: Int = 512) throws {
        self.path = path
        self.sectorSize = sectorSize
        let fd: Int32
        let end: off_t
        do throws(SystemError) {
            fd = try systemCall("open", path) { open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC) }
            do throws(SystemError) {
                end = try systemCall("lseek", path) { lseek(fd, 0, SEEK_END) }
            } catch {
                close(fd)
                throw error
            }
        } catch {
            throw BlockDeviceError.system(error)
        }
        self.fd = fd
        self.writable = writable
        self.sectorCount = UInt64(end) / UInt64(sectorSize)
    }

    deinit {
        if let direct {
            close(direct.fd)
            direct.buffer.deallocate()
        }
        close(fd)
    }

    static let directAlignment = 4096

    /// O_DIRECT is hidden behind _GNU_SOURCE in Swift's Glibc module; its
    /// value differs between architectures.
    #if arch(arm64) || arch(arm)
    static let oDirect: Int32 = 0o200000
    #else
    static let oDirect: Int32 = 0o40000
    #endif

    /// Writes through O_DIRECT, as `dd oflag=direct` does: no copy into the
    /// page cache and no flood of dirty pages for fsync to push out at the
    /// end. File systems without O_DIRECT (tmpfs), unaligned offsets and odd
    /// sizes take the buffered path.
    public func writeBulk(lba: UInt64, bytes: [UInt8]) throws {
        let offset = lba * UInt64(sectorSize)
        guard writable, !directRefused, offset % UInt64(Self.directAlignment) == 0, bytes.count % Self.directAlignment == 0 else {
            return try write(lba: lba, bytes: bytes)
        }
        guard lba + UInt64(bytes.count / sectorSize) <= sectorCount else {
            throw BlockDeviceError.outOfRange(lba: lba, count: bytes.count / sectorSize)
        }
        if direct == nil || (direct?.capacity ?? 0) < bytes.count {
            let fd = direct?.fd ?? openDirect()
            guard fd >= 0 else { return try write(lba: lba, bytes: bytes) }
            direct?.buffer.deallocate()
            direct = (fd, UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: Self.directAlignment), bytes.count)
        }
        guard let (dfd, buffer, _) = direct else { return try write(lba: lba, bytes: bytes) }
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress { buffer.copyMemory(from: base, byteCount: raw.count) }
        }
        var done = 0
        while done < bytes.count {
            do throws(SystemError) {
                done += try systemCall("pwrite(O_DIRECT)", path) {
                    pwrite(dfd, buffer + done, bytes.count - done, off_t(offset) + off_t(done))
                }
            } catch where error.errno == .invalidArgument && done == 0 {
                // The file system takes O_DIRECT opens but not these writes.
                directRefused = true
                return try write(lba: lba, bytes: bytes)
            } catch {
                throw BlockDeviceError.system(error)
            }
        }
    }

    private func openDirect() -> Int32 {
        guard let fd = try? systemCall("open(O_DIRECT)", path, { open(path, O_WRONLY | O_CLOEXEC | Self.oDirect) }) else {
            directRefused = true
            return -1
        }
        return fd
    }

    public func read(lba: UInt64, count: Int) throws -> [UInt8] {
        guard lba + UInt64(count) <= sectorCount else { throw BlockDeviceError.outOfRange(lba: lba, count: count) }
        return try readBytes(offset: lba * UInt64(sectorSize), count: count * sectorSize)
    }

    /// Reads `count` bytes at a byte offset (not necessarily sector aligned).
    public func readBytes(offset: UInt64, count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        var done = 0
        try buf.withUnsafeMutableBytes { raw in
            guard let base = raw.baseAddress else { return }
            while done < count {
                let n: Int
                do throws(SystemError) {
                    n = try systemCall("pread", path) { pread(fd, base + done, count - done, off_t(offset) + off_t(done)) }
                } catch {
                    throw BlockDeviceError.system(error)
                }
                if n == 0 { throw BlockDeviceError.outOfRange(lba: (offset + UInt64(done)) / UInt64(sectorSize), count: 1) }
                done += n
            }
        }
        return buf
    }

    public func write(lba: UInt64, bytes: [UInt8]) throws {
        guard bytes.count % sectorSize == 0, lba + UInt64(bytes.count / sectorSize) <= sectorCount else {
            throw BlockDeviceError.outOfRange(lba: lba, count: bytes.count / sectorSize)
        }
        try writeBytes(offset: lba * UInt64(sectorSize), bytes: bytes)
    }

    /// Writes bytes at a byte offset, completing short writes.
    public func writeBytes(offset: UInt64, bytes: [UInt8]) throws {
        var done = 0
        try bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            while done < bytes.count {
                do throws(SystemError) {
                    done += try systemCall("pwrite", path) { pwrite(fd, base + done, bytes.count - done, off_t(offset) + off_t(done)) }
                } catch {
                    throw BlockDeviceError.system(error)
                }
            }
        }
    }

    public func flush() throws {
        do throws(SystemError) {
            try systemCall("fsync", path) { fsync(fd) }
        } catch {
            throw BlockDeviceError.system(error)
        }
    }
}
