import Foundation
import OutpostProcess

/// Runs the external tools the builder leans on (mkfs.*, mtools, mksquashfs,
/// qemu-img, apt-get, dpkg-deb, depmod) through the host's one process runner,
/// with a fixed locale and time zone so their output does not depend on the
/// caller's.
public enum Tool {
    /// Runs `argv` with standard input from /dev/null, returning stdout. A
    /// non-zero exit throws `HostProcessError`: one line with the command, its
    /// status and the last line of stderr.
    ///
    /// - Parameter extra: environment changes; an empty value removes the variable
    ///   (mksquashfs refuses SOURCE_DATE_EPOCH together with explicit -mkfs-time/-all-time).
    @discardableResult
    public static func run(_ argv: [String], environment extra: [String: String] = [:], in directory: URL? = nil) throws -> String {
        var env: [String: String?] = ["LC_ALL": "C", "TZ": "UTC"]
        for (k, v) in extra { env[k] = v.isEmpty ? String?.none : v }
        return try HostProcess.output(argv, environment: env, directory: directory?.path)
    }

    /// Resolves a program name through PATH (and the sbin directories).
    public static func which(_ name: String) -> String? { HostProcess.which(name) }
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
