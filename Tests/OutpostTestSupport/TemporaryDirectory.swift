import Foundation

/// A fresh directory under the system's temporary directory, removed when this object goes
/// away (or at `remove()`). Keep the object alive for as long as the files are in use:
/// `withExtendedLifetime` or a later use of `path` does that.
public final class TemporaryDirectory: Sendable {
    public let path: String

    public init(_ tag: String) throws {
        path = try Self.create(tag)
    }

    deinit { remove() }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }

    /// Creates a fresh directory whose removal the caller owns (`defer` or a harness teardown).
    /// The name carries the tag, the PID and a random part, so parallel tests never share one.
    public static func create(_ tag: String) throws -> String {
        let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        let path = base + "/outpost-\(tag)-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 36))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
