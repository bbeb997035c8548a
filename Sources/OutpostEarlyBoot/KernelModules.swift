// Loads the early kernel modules the builder listed, in dependency order.
//
// The builder resolves dependencies from modules.dep and writes one module
// path per line, dependencies first, so no modprobe (and no kmod library) is
// needed in the initramfs.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform

/// A module that could not be loaded; early boot reports these and goes on,
/// because a missing optional driver must not stop the boot, and a missing
/// essential one fails later with a clearer error (no slot, no dm-verity).
public struct ModuleLoadFailure: Equatable, Sendable {
    public var path: String
    public var error: SystemError
}

public enum KernelModules {
    /// The list the builder writes into the initramfs.
    public static let defaultListPath = "/lib/modules/initramfs.list"

    /// Module paths from the list file's text: one per line, '#' comments and
    /// blank lines ignored, order kept.
    public static func parseList(_ text: String) -> [String] {
        text.split(separator: "\n").compactMap { raw in
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
            let path = line.trimmingSpaces()
            return path.isEmpty ? nil : path
        }
    }

    /// Loads each module with finit_module(2). EEXIST (already loaded or
    /// built in) counts as success; every other failure is returned.
    public static func load(paths: [String]) -> [ModuleLoadFailure] {
        var failures: [ModuleLoadFailure] = []
        for path in paths {
            do {
                try loadOne(path)
            } catch {
                failures.append(ModuleLoadFailure(path: path, error: error))
            }
        }
        return failures
    }

    static func loadOne(_ path: String) throws(SystemError) {
        let fd = try Sys.open(path, O_RDONLY)
        defer { Sys.close(fd) }
        // EEXIST: already loaded (built in, or loaded as a dependency) is success.
        _ = try systemCall("finit_module", path, expecting: [.fileExists]) { OutpostShims_finit_module(fd, "", 0) }
    }
}

extension Substring {
    /// Without leading and trailing spaces, tabs and carriage returns.
    public func trimmingSpaces() -> String {
        var view = self[...]
        while let first = view.first, first == " " || first == "\t" || first == "\r" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" || last == "\r" { view = view.dropLast() }
        return String(view)
    }
}

extension String {
    public func trimmingSpaces() -> String { self[...].trimmingSpaces() }
}
