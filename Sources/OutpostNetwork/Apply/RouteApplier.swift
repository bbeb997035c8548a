import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why applying a decision to the kernel or to resolv.conf failed; carries the command and its stderr.
public enum NetworkApplyError: Error, Equatable, CustomStringConvertible {
    case command(arguments: [String], status: Int32, stderr: String)
    case spawn(arguments: [String], detail: String)
    case write(path: String, errno: Int32)

    public var description: String {
        switch self {
        case .command(let args, let status, let err): return "ip \(args.joined(separator: " ")): exit \(status): \(err)"
        case .spawn(let args, let detail): return "ip \(args.joined(separator: " ")): \(detail)"
        case .write(let path, let e): return "write \(path): \(String(cString: strerror(e)))"
        }
    }
}

/// Puts decisions into effect. First step: routes and addresses go through a spawned
/// `ip` (iproute2), one idempotent `replace` per change; a libnl rtnl_route version can
/// replace it without touching callers. `namespace` runs `ip -n NAME` for the host tests.
///
/// Routes: every configured port keeps a standby default route at metric 1000+rank, so a
/// probe pinned to that port (SO_BINDTODEVICE) can reach the controller; the active port
/// owns the metric-0 default route, which is the only one that changes on failover.
public struct RouteApplier: Sendable {
    public let namespace: String?
    public let resolvConfPath: String
    public static let activeMetric = 0

    public init(namespace: String?, resolvConfPath: String) {
        self.namespace = namespace
        self.resolvConfPath = resolvConfPath
    }

    /// Brings a static port up with its address and standby route.
    public func configure(_ port: PortConfig, rank: Int) throws(NetworkApplyError) {
        try ip(["link", "set", "dev", port.name, "up"])
        guard case .staticAddress(let address, let prefix, let gateway, _) = port.mode else { return }
        try ip(["addr", "replace", "\(address)/\(prefix)", "dev", port.name])
        try ip(["route", "replace", "default", "via", "\(gateway)", "dev", port.name, "metric", "\(1000 + rank)"])
    }

    /// Points the active default route (and DNS) at `port`, or removes it when no port is usable.
    public func activate(_ port: PortConfig?) throws(NetworkApplyError) {
        guard let port else {
            try? ip(["route", "del", "default", "metric", "\(Self.activeMetric)"])
            return
        }
        guard case .staticAddress(_, _, let gateway, let dns) = port.mode else { return }
        try ip(["route", "replace", "default", "via", "\(gateway)", "dev", port.name, "metric", "\(Self.activeMetric)"])
        try writeResolvConf(dns)
    }

    /// Writes resolv.conf atomically (temp + rename), so resolvers never read half a file.
    public func writeResolvConf(_ servers: [IPv4]) throws(NetworkApplyError) {
        let text = "# written by outpostd: DNS follows the active port\n" + servers.map { "nameserver \($0)\n" }.joined()
        let temp = resolvConfPath + ".tmp"
        guard FileManager.default.createFile(atPath: temp, contents: Data(text.utf8)) else { throw .write(path: temp, errno: errno) }
        guard rename(temp, resolvConfPath) == 0 else { throw .write(path: resolvConfPath, errno: errno) }
    }

    private func ip(_ arguments: [String]) throws(NetworkApplyError) {
        let full = (namespace.map { ["-n", $0] } ?? []) + arguments
        let process = Process()
        process.executableURL = URL(fileURLWithPath: FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip")
        process.arguments = full
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        do { try process.run() } catch { throw .spawn(arguments: full, detail: "\(error)") }
        let errData = stderr.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw .command(arguments: full, status: process.terminationStatus,
                           stderr: String(decoding: errData, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}
