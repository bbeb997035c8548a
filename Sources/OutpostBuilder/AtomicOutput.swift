import Foundation

/// Every host output (image, slot, qcow2, update bundle) is written under
/// `OUTPUT.partial` (with scratch space in `OUTPUT.work`), flushed to disk and
/// renamed into place only when complete, so a failed or interrupted build
/// never leaves a half-written output behind, and a power cut never leaves a
/// renamed but empty one. The one host-side atomic writer; `outpost bundle
/// create` uses it too.
public enum AtomicOutput {
    public static func produce<T>(_ output: String, _ body: (_ partial: String, _ work: String) throws -> T) throws -> T {
        let fm = FileManager.default
        let directory = URL(fileURLWithPath: output).deletingLastPathComponent().path
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let partial = output + ".partial", work = output + ".work"
        try? fm.removeItem(atPath: partial)
        try? fm.removeItem(atPath: work)
        try fm.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: work) }
        do {
            let result = try body(partial, work)
            try flush(partial)
            // rename(2) replaces an existing file in one step.
            guard rename(partial, output) == 0 else { throw BuilderError.io(path: output, message: "rename: \(String(cString: strerror(errno)))") }
            try flush(directory)
            return result
        } catch {
            try? fm.removeItem(atPath: partial)
            throw error
        }
    }

    /// fsync(2) of a file or directory.
    static func flush(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BuilderError.io(path: path, message: "open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw BuilderError.io(path: path, message: "fsync: \(String(cString: strerror(errno)))") }
    }
}

/// Converts a raw image to qcow2, with the same all-or-nothing guarantee.
public func convertToQcow2(_ raw: String, output: String) throws {
    _ = try AtomicOutput.produce(output) { partial, _ in
        try Tool.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, partial])
    }
}
