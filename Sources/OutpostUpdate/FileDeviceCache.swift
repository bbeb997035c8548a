import OutpostDisk
import OutpostPlatform
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
        let fd: Int32
        do throws(SystemError) { fd = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) } } catch {
            throw BlockDeviceError.system(error)
        }
        defer { close(fd) }
        // posix_fadvise returns the error number instead of setting errno.
        let rc = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_DONTNEED)
        guard rc == 0 else { throw BlockDeviceError.system(SystemError(call: "posix_fadvise", object: path, code: rc)) }
    }
}
