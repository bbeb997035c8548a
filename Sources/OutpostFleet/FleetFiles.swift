// Small file helpers over OutpostPlatform's FileIO for the client's state on
// PERSIST: directories made private, whole-file reads that tell "absent" from
// "broken", and every replacement atomic.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

package enum FleetFiles {
    /// Creates `path` (and missing parents) with mode 0700; an existing one is fine.
    package static func makeDirectory(_ path: String) throws(FleetError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw .system(.current("mkdir", prefix))
            }
        }
    }

    package static func readText(_ path: String, limit: Int = 1 << 20) throws(FleetError) -> String? {
        try read(path, limit: limit).map { String(decoding: $0, as: UTF8.self) }
    }

    package static func read(_ path: String, limit: Int = 1 << 20) throws(FleetError) -> [UInt8]? {
        do { return try FileIO.readIfPresent(path, limit: limit) } catch { throw .system(error) }
    }

    package static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws(FleetError) {
        do { try FileIO.writeAtomically(bytes, to: path, mode: mode) } catch { throw .system(error) }
    }

    package static func remove(_ path: String) throws(FleetError) {
        if unlink(path) != 0 && errno != ENOENT { throw .system(.current("unlink", path)) }
    }

    /// The names in `directory` (no "." or ".."), or [] when it does not exist.
    package static func list(_ directory: String) throws(FleetError) -> [String] {
        guard let dir = opendir(directory) else {
            if errno == ENOENT { return [] }
            throw .system(.current("opendir", directory))
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
