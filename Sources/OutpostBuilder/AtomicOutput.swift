import Foundation

/// Every build output is written under `OUTPUT.partial` (with scratch space
/// in `OUTPUT.work`) and renamed into place only when complete, so a failed
/// or interrupted build never leaves a half-written image behind.
enum AtomicOutput {
    static func produce<T>(_ output: String, _ body: (_ partial: String, _ work: String) throws -> T) throws -> T {
        let fm = FileManager.default
        try fm.createDirectory(at: URL(fileURLWithPath: output).deletingLastPathComponent(), withIntermediateDirectories: true)
        let partial = output + ".partial", work = output + ".work"
        try? fm.removeItem(atPath: partial)
        try? fm.removeItem(atPath: work)
        try fm.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: work) }
        do {
            let result = try body(partial, work)
            try? fm.removeItem(atPath: output)
            try fm.moveItem(atPath: partial, toPath: output)
            return result
        } catch {
            try? fm.removeItem(atPath: partial)
            throw error
        }
    }
}

/// Converts a raw image to qcow2, with the same all-or-nothing guarantee.
public func convertToQcow2(_ raw: String, output: String) throws {
    _ = try AtomicOutput.produce(output) { partial, _ in
        try Tool.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, partial])
    }
}
