import OutpostDisk
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// After fsync the written pages are still in the page cache, so a plain
// read-back would compare memory with memory. POSIX_FADV_DONTNEED on a
// second descriptor of the same file or block device drops the (now clean)
// pages of that range from the shared cache; the read-back then reaches the
// medium.
extension FileBlockDevice: CacheDroppingDevice {
    public func dropCache(offset: UInt64, length: UInt64) throws {
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw BlockDeviceError.io(call: "open", path: path, errno: errno) }
        defer { close(fd) }
        let rc = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_DONTNEED)
        guard rc == 0 else { throw BlockDeviceError.io(call: "posix_fadvise", path: path, errno: rc) }
    }
}
