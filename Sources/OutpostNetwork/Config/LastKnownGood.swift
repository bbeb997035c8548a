import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why the last-known-good list could not be read or written; names the path and the call.
public enum LastKnownGoodError: Error, Equatable, CustomStringConvertible {
    case io(call: String, path: String, errno: Int32)
    case corrupt(path: String, detail: String)

    public var description: String {
        switch self {
        case .io(let call, let path, let e): return "last-known-good: \(call) \(path): \(String(cString: strerror(e)))"
        case .corrupt(let path, let detail): return "last-known-good: \(path): \(detail)"
        }
    }
}

/// The ordered list of configurations that have worked, newest first, kept in one file in a
/// directory on PERSIST. It is replaced atomically (write temp, fsync, rename, fsync dir) so a
/// power cut leaves either the old list or the new one, never a torn file.
public struct LastKnownGoodStore: Sendable {
    public let directory: String
    public let capacity: Int
    public var path: String { directory + "/network-lkg.json" }

    public init(directory: String, capacity: Int = 4) {
        self.directory = directory
        self.capacity = max(1, capacity)
    }

    /// All stored configurations, newest first; an absent file is an empty list.
    public func load() throws(LastKnownGoodError) -> [NetworkConfig] {
        guard let data = FileManager.default.contents(atPath: path) else {
            if access(path, F_OK) != 0 && errno == ENOENT { return [] }
            throw .io(call: "read", path: path, errno: errno)
        }
        guard let list = (try? JSONSerialization.jsonObject(with: data)) as? [Any] else {
            throw .corrupt(path: path, detail: "not a JSON list")
        }
        var configs: [NetworkConfig] = []
        for (i, entry) in list.enumerated() {
            guard let entryData = try? JSONSerialization.data(withJSONObject: entry, options: [.sortedKeys]) else {
                throw .corrupt(path: path, detail: "entry \(i) is not JSON")
            }
            do { configs.append(try NetworkConfig(json: entryData)) } catch {
                throw .corrupt(path: path, detail: "entry \(i): \(error)")
            }
        }
        return configs
    }

    /// Records `config` as the newest working configuration, dropping duplicates and the oldest beyond capacity.
    public func remember(_ config: NetworkConfig) throws(LastKnownGoodError) {
        var list = try load().filter { $0.ports != config.ports }
        list.insert(config, at: 0)
        try write(Array(list.prefix(capacity)))
    }

    private func write(_ configs: [NetworkConfig]) throws(LastKnownGoodError) {
        let objects = configs.compactMap { try? JSONSerialization.jsonObject(with: $0.source) }
        guard let data = try? JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys]) else {
            throw .corrupt(path: path, detail: "cannot encode list")
        }
        let temp = path + ".tmp"
        let fd = retryingEINTR { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
        guard fd >= 0 else { throw .io(call: "open", path: temp, errno: errno) }
        var ok = data.withUnsafeBytes { buf -> Bool in
            guard let base = buf.baseAddress else { return true }
            var offset = 0
            while offset < buf.count {
                let n = retryingEINTR { Glibc.write(fd, base + offset, buf.count - offset) }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
        let writeErrno = errno
        if ok && retryingEINTR({ fsync(fd) }) != 0 { ok = false }
        close(fd)
        guard ok else { throw .io(call: "write", path: temp, errno: writeErrno) }
        guard rename(temp, path) == 0 else { throw .io(call: "rename", path: path, errno: errno) }
        let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 { _ = retryingEINTR { fsync(dirFD) }; close(dirFD) }
    }
}

/// Repeats a system call interrupted by a signal; the agent installs handlers, so EINTR is routine.
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> T {
    while true {
        let r = call()
        if r < 0 && errno == EINTR { continue }
        return r
    }
}
