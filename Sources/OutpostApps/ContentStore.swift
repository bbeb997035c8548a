// Verified app images on PERSIST, each kept once by its SHA-256 and shared by
// every instance that uses it. A download becomes visible under `verified/`
// only after its size and whole-file digest matched, by one rename; a partial
// or corrupt file never has a verified name.
//
//   ROOT/
//     downloading/<sha256>.part   being fetched (Range resume continues it)
//     verified/<sha256>           mode 0444, complete, digest checked
//
// Space is checked before the first byte is fetched: the bytes still missing
// plus a reserve must fit in what statvfs says is free, or the image is refused
// with both numbers.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Crypto
import OutpostHTTP
import OutpostPlatform

/// The device's store of verified app images.
public struct ContentStore: Sendable {
    public let root: String
    /// Space that must stay free on PERSIST after a download (logs, state files, overlays' growth).
    public let reserve: UInt64
    /// Bytes free for an unprivileged writer on the filesystem holding a path; statvfs on the device,
    /// a fixed figure in tests that need "the disk is full" without filling one.
    public let freeSpace: @Sendable (String) throws(AppsError) -> UInt64

    public init(root: String, reserve: UInt64 = 64 << 20,
                freeSpace: @escaping @Sendable (String) throws(AppsError) -> UInt64 = ContentStore.statvfsFree) {
        self.root = root
        self.reserve = reserve
        self.freeSpace = freeSpace
    }

    var verifiedDirectory: String { root + "/verified" }
    var downloadingDirectory: String { root + "/downloading" }

    /// The path a verified image of this digest has (whether or not it is there yet).
    public func verifiedPath(sha256: String) -> String { verifiedDirectory + "/" + sha256.lowercased() }

    func partialPath(sha256: String) -> String { downloadingDirectory + "/" + sha256.lowercased() + ".part" }

    /// The verified image's path if the store has it.
    public func verified(sha256: String) -> String? {
        var st = stat()
        return stat(verifiedPath(sha256: sha256), &st) == 0 ? verifiedPath(sha256: sha256) : nil
    }

    /// Progress of one `fetch`, for the instance's reported state.
    public enum Progress: Equatable, Sendable {
        case downloading(bytes: UInt64, of: UInt64)
        case verifying
    }

    /// The verified image for `source`: from the store when an instance already
    /// fetched it, otherwise downloaded (resuming a partial file), checked and
    /// stored. One fetch or collection runs at a time (an flock on ROOT/.lock), so two
    /// instances that share an image never write one partial file together.
    public func fetch(_ source: ImageSource, options: HTTPOptions = HTTPOptions(), maxAttempts: Int = 8,
                      progress: (Progress) -> Void = { _ in }) throws(AppsError) -> String {
        if let path = verified(sha256: source.sha256) { return path }
        do throws(SystemError) {
            try Self.makeDirectory(root)
            try Self.makeDirectory(verifiedDirectory)
            try Self.makeDirectory(downloadingDirectory)
        } catch { throw .system(error) }
        let lock = try exclusive()
        defer { _ = close(lock) }
        // Another fetch may have stored it while this one waited for the lock.
        if let path = verified(sha256: source.sha256) { return path }

        let part = partialPath(sha256: source.sha256)
        var have = Self.fileSize(part)
        if have > source.size {
            _ = unlink(part)   // longer than the image can be: not a prefix of it
            have = 0
        }
        let needed = source.size - have
        let free = try freeSpace(root)
        guard needed <= free, reserve <= free - needed else {
            throw .notEnoughSpace(image: source.name, needed: needed, free: free, reserve: reserve, directory: root)
        }

        if have < source.size {
            var download = HTTPDownload(url: source.url, destination: part, options: options)
            download.maxAttempts = maxAttempts
            download.maxBytes = source.size
            do {
                try download.run { bytes, _ in progress(.downloading(bytes: bytes, of: source.size)) }
            } catch {
                // A file larger than promised is not this image: start over next time.
                if case .tooLarge = error { _ = unlink(part) }
                throw .download(image: source.name, error)
            }
        }
        progress(.verifying)
        try verifyAndStore(part, source: source)
        return verifiedPath(sha256: source.sha256)
    }

    /// Checks the complete partial file's size and digest, then publishes it read-only by one rename.
    /// A file that fails is deleted, so the next fetch starts clean.
    func verifyAndStore(_ part: String, source: ImageSource) throws(AppsError) {
        let size = Self.fileSize(part)
        guard size == source.size else {
            _ = unlink(part)
            throw .sizeMismatch(image: source.name, expected: source.size, actual: size)
        }
        let digest = try Self.sha256(of: part)
        guard digest == source.sha256.lowercased() else {
            _ = unlink(part)
            throw .digestMismatch(image: source.name, expected: source.sha256.lowercased(), actual: digest)
        }
        let final = verifiedPath(sha256: source.sha256)
        do throws(SystemError) {
            try systemCall("chmod", part) { chmod(part, 0o444) }
            try systemCall("rename", "\(part) to \(final)") { rename(part, final) }
            try Self.syncDirectory(verifiedDirectory)
        } catch { throw .system(error) }
    }

    /// Removes every verified image and partial download whose digest is not in `referenced`
    /// (the digests of all configured instances' sources) and is not the backing file of one of
    /// `overlays` (instance disks kept with `preserve` across an image change still read their
    /// old image); returns the digests removed.
    @discardableResult
    public func collectGarbage(referenced: Set<String>, overlays: [String] = []) throws(AppsError) -> [String] {
        var keep = Set(referenced.map { $0.lowercased() })
        for overlay in overlays {
            guard let backing = try? QCOW2Overlay.info(overlay).backingFile else { continue }
            let (directory, name) = QCOW2Overlay.splitPath(backing)
            if directory == verifiedDirectory { keep.insert(name) }
        }
        var st = stat()
        guard stat(root, &st) == 0 else { return [] }   // nothing was ever stored
        let lock = try exclusive()
        defer { _ = close(lock) }
        var removed: [String] = []
        for (directory, suffix) in [(verifiedDirectory, ""), (downloadingDirectory, ".part")] {
            let names: [String]
            do { names = try Self.listDirectory(directory) } catch where error.errno == .noSuchFileOrDirectory {
                continue
            } catch { throw .system(error) }
            for name in names {
                let digest = suffix.isEmpty || !name.hasSuffix(suffix) ? name : String(name.dropLast(suffix.count))
                guard !keep.contains(digest) else { continue }
                let path = directory + "/" + name
                do throws(SystemError) { try systemCall("unlink", path) { unlink(path) } } catch { throw .system(error) }
                if !removed.contains(digest) { removed.append(digest) }
            }
        }
        return removed
    }

    /// Takes the store's lock (blocking until a running fetch or collection ends); close the fd to release it.
    func exclusive() throws(AppsError) -> Int32 {
        let path = root + "/.lock"
        do throws(SystemError) {
            let fd = try systemCall("open", path) { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
            do throws(SystemError) { try systemCall("flock", path) { flock(fd, LOCK_EX) } } catch {
                _ = close(fd)
                throw error
            }
            return fd
        } catch { throw .system(error) }
    }

    /// statvfs's f_bavail × f_frsize: what a non-root writer may still use, which is what PERSIST's
    /// other users (logs, state) see too.
    @Sendable
    public static func statvfsFree(_ path: String) throws(AppsError) -> UInt64 {
        var fs = statvfs()
        do throws(SystemError) { try systemCall("statvfs", path) { statvfs(path, &fs) } } catch { throw .system(error) }
        return UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
    }

    /// The hex SHA-256 of a whole file, read in 1 MiB pieces.
    public static func sha256(of path: String) throws(AppsError) -> String {
        do throws(SystemError) {
            let fd = try systemCall("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
            defer { _ = close(fd) }
            var hasher = SHA256()
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let count = try systemCall("read", path) { chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
                if count == 0 { break }
                chunk.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            }
            return hasher.finalize().map { byte in
                let hex = String(byte, radix: 16)
                return byte < 16 ? "0" + hex : hex
            }.joined()
        } catch { throw .system(error) }
    }

    static func fileSize(_ path: String) -> UInt64 {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : 0
    }

    static func makeDirectory(_ path: String) throws(SystemError) {
        _ = try systemCall("mkdir", path, expecting: [.fileExists]) { mkdir(path, 0o755) }
    }

    static func syncDirectory(_ path: String) throws(SystemError) {
        let fd = try systemCall("open", path) { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { _ = close(fd) }
        try systemCall("fsync", path) { fsync(fd) }
    }

    static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError.current("opendir", path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." && !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted()
    }
}
