import Foundation
@testable import OutpostNetwork

/// Three network namespaces the test creates and deletes by name:
///
///     device ns            upstream-e ns                 upstream-w ns
///     eth0  10.1.0.2 ── veth ── ueth 10.1.0.1
///                              lo 10.200.0.1 (probe "eth0-side")
///     wlan0 10.2.0.2 ───────────────── veth ──────────── uwlan 10.2.0.1
///                                                        lo 10.200.0.1 (probe "wlan0-side")
///
/// The probe address exists in both upstreams, so which side answers shows which port the
/// device's default route uses. Static addressing only (no DHCP in this slice). Every address
/// lives inside these namespaces; nothing leaves them.
final class NamespaceHarness: @unchecked Sendable {
    let device: String
    let upstreamEth: String
    let upstreamWlan: String
    let workDir: String
    private var servers: [Process] = []
    /// A long-lived `ip -batch -` in the eth0 upstream, so a carrier cut costs a pipe write,
    /// not a process spawn: that keeps the cut instant sharp and lets the flap reach 10 Hz.
    private var linkControl: Process?
    private var linkControlInput: FileHandle?
    static let probe = ProbeTarget(address: IPv4("10.200.0.1")!, port: 8080, path: "/id")

    static let config = """
    { "ports": {
        "eth0":  { "mode": "static", "address": "10.1.0.2/24", "gateway": "10.1.0.1", "dns": ["10.1.0.53"], "cost": 10 },
        "wlan0": { "mode": "static", "address": "10.2.0.2/24", "gateway": "10.2.0.1", "dns": ["10.2.0.53"], "cost": 20 } } }
    """

    init() throws {
        let tag = String(UInt32.random(in: 0...0xFFFFFF), radix: 16)
        device = "opn-\(tag)-dev"
        upstreamEth = "opn-\(tag)-ue"
        upstreamWlan = "opn-\(tag)-uw"
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("opn-\(tag)").path
        do { try setUp() } catch { tearDown(); throw error }
    }

    private func setUp() throws {
        for ns in [device, upstreamEth, upstreamWlan] { try sh("ip", "netns", "add", ns) }
        try sh("ip", "-n", device, "link", "set", "lo", "up")
        try sh("ip", "-n", device, "link", "add", "eth0", "type", "veth", "peer", "name", "ueth", "netns", upstreamEth)
        try sh("ip", "-n", device, "link", "add", "wlan0", "type", "veth", "peer", "name", "uwlan", "netns", upstreamWlan)
        for (ns, dev, addr, side) in [(upstreamEth, "ueth", "10.1.0.1/24", "eth0-side"), (upstreamWlan, "uwlan", "10.2.0.1/24", "wlan0-side")] {
            try sh("ip", "-n", ns, "link", "set", "lo", "up")
            try sh("ip", "-n", ns, "addr", "add", "10.200.0.1/32", "dev", "lo")
            try sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            try sh("ip", "-n", ns, "link", "set", dev, "up")
            let dir = workDir + "/" + side
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try Data(side.utf8).write(to: URL(fileURLWithPath: dir + "/id"))
            let server = Process()
            server.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            server.arguments = ["netns", "exec", ns, "python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", dir]
            server.standardOutput = FileHandle.nullDevice
            server.standardError = FileHandle.nullDevice
            try server.run()
            servers.append(server)
            // Bounded wait for the server, probed from inside its own namespace.
            let deadline = ContinuousClock.now + .seconds(10)
            while (try? NetworkNamespace.run(ns) { try HTTPProbe.get(Self.probe, device: nil, timeout: .milliseconds(200)) }) != side {
                guard ContinuousClock.now < deadline else { throw HarnessError.timeout("http.server in \(ns)") }
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
    }

    private func startLinkControl() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        p.arguments = ["-n", upstreamEth, "-force", "-batch", "-"]
        let input = Pipe()
        p.standardInput = input
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        linkControl = p
        linkControlInput = input.fileHandleForWriting
    }

    /// Kills the probe servers by pid and deletes exactly the namespaces this harness made.
    func tearDown() {
        for server in servers where server.isRunning {
            server.terminate()
            let deadline = Date().addingTimeInterval(3)
            while server.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
            if server.isRunning { kill(server.processIdentifier, SIGKILL) }
        }
        servers = []
        try? linkControlInput?.close()
        if let p = linkControl {
            let deadline = Date().addingTimeInterval(3)
            while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        linkControl = nil
        for ns in [device, upstreamEth, upstreamWlan] { _ = try? sh("ip", "netns", "del", ns) }
        try? FileManager.default.removeItem(atPath: workDir)
    }

    /// Cuts or restores eth0's carrier by taking its upstream peer down or up.
    func setEthCarrier(_ up: Bool) throws {
        if linkControl == nil { try startLinkControl() }
        guard let input = linkControlInput, linkControl?.isRunning == true else { throw HarnessError.command("ip -batch exited") }
        try input.write(contentsOf: Data("link set ueth \(up ? "up" : "down")\n".utf8))
    }

    /// One probe from the device namespace through whatever the default route says.
    func probeViaDefaultRoute(timeout: Duration = .milliseconds(50)) -> String? {
        try? NetworkNamespace.run(device) { try HTTPProbe.get(Self.probe, device: nil, timeout: timeout) }
    }

    func manager(holdDown: Duration) throws -> NetworkManager {
        var options = ManagerOptions(namespace: device, resolvConfPath: workDir + "/resolv.conf", probe: Self.probe)
        options.holdDown = holdDown
        options.probeInterval = .milliseconds(50)
        options.probeTimeout = .milliseconds(200)
        return NetworkManager(config: try NetworkConfig(json: Data(Self.config.utf8)), options: options)
    }

    /// Waits (bounded) until `condition` holds; returns the time it took, or nil on timeout.
    @discardableResult
    static func waitUntil(_ limit: Duration, every: Double = 0.005, _ condition: () -> Bool) -> Duration? {
        let start = ContinuousClock.now
        while start.duration(to: .now) < limit {
            if condition() { return start.duration(to: .now) }
            Thread.sleep(forTimeInterval: every)
        }
        return nil
    }
}

enum HarnessError: Error { case timeout(String), command(String) }

@discardableResult
func sh(_ args: String...) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    guard p.terminationStatus == 0 else { throw HarnessError.command("\(args.joined(separator: " ")): \(text)") }
    return text
}
