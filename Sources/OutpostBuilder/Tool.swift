import Foundation

/// Runs the external tools the builder leans on (mkfs.*, mtools, mksquashfs,
/// qemu-img) with a fixed environment, so their output does not depend on
/// the caller's locale or clock.
public enum Tool {
    /// Runs `argv`, returning stdout. A non-zero exit throws with the last line of stderr.
    @discardableResult
    public static func run(_ argv: [String], environment extra: [String: String] = [:], stdin: FileHandle? = nil) throws -> String {
        guard let exe = argv.first else { return "" }
        guard let path = which(exe) else { throw BuilderError.toolMissing(exe) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = Array(argv.dropFirst())
        var env = ProcessInfo.processInfo.environment
        env["LC_ALL"] = "C"
        env["TZ"] = "UTC"
        // An empty value removes the variable (mksquashfs refuses
        // SOURCE_DATE_EPOCH together with explicit -mkfs-time/-all-time).
        for (k, v) in extra { env[k] = v.isEmpty ? nil : v }
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        if let stdin { p.standardInput = stdin }
        do { try p.run() } catch { throw BuilderError.toolMissing(exe) }
        // Drain both pipes concurrently so a chatty tool cannot block on a full pipe.
        nonisolated(unsafe) var errData = Data()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw BuilderError.tool(command: argv.prefix(2).joined(separator: " "), status: p.terminationStatus,
                                    stderr: String(decoding: errData, as: UTF8.self))
        }
        return String(decoding: outData, as: UTF8.self)
    }

    /// Resolves a program name through PATH, also looking in the sbin
    /// directories that a non-root PATH often lacks.
    public static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        return dirs.map { $0 + "/" + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

/// Progress lines for long steps, on stderr so `--json` output stays clean.
public struct Progress: Sendable {
    public var enabled: Bool
    public init(enabled: Bool) { self.enabled = enabled }

    public func step(_ n: Int, of total: Int, _ message: String) {
        guard enabled else { return }
        FileHandle.standardError.write(Data("[\(n)/\(total)] \(message)\n".utf8))
    }

    public func percent(_ label: String, done: UInt64, total: UInt64) {
        guard enabled, total > 0 else { return }
        let pct = Int(done * 100 / total)
        if isatty(2) != 0 {
            FileHandle.standardError.write(Data("\r      \(label): \(pct)%\(done == total ? "\n" : "")".utf8))
        } else if pct % 25 == 0 || done == total {
            FileHandle.standardError.write(Data("      \(label): \(pct)%\n".utf8))
        }
    }
}
