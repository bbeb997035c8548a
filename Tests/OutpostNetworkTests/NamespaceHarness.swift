import Foundation
import OutpostHTTP
import OutpostTestSupport
@testable import OutpostNetwork

/// Four network namespaces the test creates and deletes by name:
///
///     device ns                 upstream ns per port (opn-TAG-eth0, -wlan0, -wwan0)
///     eth0  (DHCP or static) ── veth ── ueth0  10.1.0.1/24  dnsmasq → 10.1.0.100, router 10.1.0.1, dns 10.1.0.53
///     wlan0                  ── veth ── uwlan0 10.2.0.1/24  dnsmasq → 10.2.0.100 ...
///     wwan0                  ── veth ── uwwan0 10.3.0.1/24  dnsmasq → 10.3.0.100 ...
///                                       lo 10.200.0.1: http.server answering "<port>-side" at /id
///
/// The probe address exists in every upstream, so which side answers shows which port the
/// device's default route uses. With `sharedSubnet`, every upstream is 10.0.2.2/24 and hands
/// out 10.0.2.15, as QEMU user-mode networking does. Every address lives inside these
/// namespaces; every process started here is killed by its PID at teardown.
// @unchecked: the process lists change only on the test's own thread (init, setCarrier,
// teardown); the managers' threads only read the immutable names and paths.
final class NamespaceHarness: @unchecked Sendable {
    static let ports = ["eth0", "wlan0", "wwan0"]
    static let probeURL = "http://10.200.0.1:8080/id"
    static let probe = try! HTTPURL(probeURL)

    let tag: String
    let device: String
    let workDir: String
    let sharedSubnet: Bool
    private(set) var processes: [ChildProcess] = []
    private var dnsmasq: [String: pid_t] = [:]
    /// A long-lived `ip -batch -` per upstream, so a carrier cut costs a pipe write, not a
    /// process spawn: that keeps the cut instant sharp and lets the flap reach 10 Hz.
    private var linkControl: [String: ChildProcess] = [:]

    func upstream(_ port: String) -> String { "opn-\(tag)-\(port)" }
    func peer(_ port: String) -> String { "u" + port }
    func subnet(_ port: String) -> Int { (Self.ports.firstIndex(of: port) ?? 0) + 1 }
    func gateway(_ port: String) -> String { sharedSubnet ? "10.0.2.2" : "10.\(subnet(port)).0.1" }
    func leaseAddress(_ port: String) -> String { sharedSubnet ? "10.0.2.15" : "10.\(subnet(port)).0.100" }
    var upstreamEth: String { upstream("eth0") }

    /// Config text with every port on DHCP (costs 10/20/30) and the harness's probe URL.
    static func dhcpConfig(testTime: Int = 5, extra: [String: String] = [:]) -> String {
        let ports = Self.ports.enumerated().map { i, p in
            #""\#(p)": { "mode": "dhcp", "cost": \#(10 * (i + 1))\#(extra[p].map { ", " + $0 } ?? "") }"#
        }
        return #"{ "probe": "\#(probeURL)", "testTime": \#(testTime), "ports": { \#(ports.joined(separator: ", ")) } }"#
    }

    /// Config text with static addresses on eth0 and wlan0 (sites without DHCP).
    static let staticConfig = """
    { "probe": "\(probeURL)", "ports": {
        "eth0":  { "mode": "static", "address": "10.1.0.2/24", "gateway": "10.1.0.1", "dns": ["10.1.0.53"], "cost": 10 },
        "wlan0": { "mode": "static", "address": "10.2.0.2/24", "gateway": "10.2.0.1", "dns": ["10.2.0.53"], "cost": 20 } } }
    """

    /// `dhcpOn`: the upstreams that run a DHCP server. `deviceNames` renames device-side links
    /// at creation (to test renaming by MAC).
    init(dhcpOn: Set<String> = Set(ports), sharedSubnet: Bool = false, deviceNames: [String: String] = [:]) throws {
        tag = String(UInt32.random(in: 0...0xFFFFFF), radix: 16)
        device = "opn-\(tag)-dev"
        workDir = try TemporaryDirectory.create("opn-\(tag)")
        self.sharedSubnet = sharedSubnet
        do { try setUp(dhcpOn: dhcpOn, deviceNames: deviceNames) } catch { tearDown(); throw error }
    }

    private func setUp(dhcpOn: Set<String>, deviceNames: [String: String]) throws {
        try sh("ip", "netns", "add", device)
        try sh("ip", "-n", device, "link", "set", "lo", "up")
        for port in Self.ports {
            let ns = upstream(port)
            try sh("ip", "netns", "add", ns)
            try sh("ip", "-n", device, "link", "add", deviceNames[port] ?? port, "type", "veth", "peer", "name", peer(port), "netns", ns)
            try sh("ip", "-n", ns, "link", "set", "lo", "up")
            try sh("ip", "-n", ns, "addr", "add", "10.200.0.1/32", "dev", "lo")
            try sh("ip", "-n", ns, "addr", "add", "\(gateway(port))/24", "dev", peer(port))
            try sh("ip", "-n", ns, "link", "set", peer(port), "up")
            let side = port + "-side"
            let dir = workDir + "/" + side
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try Data(side.utf8).write(to: URL(fileURLWithPath: dir + "/id"))
            processes.append(try spawn(["netns", "exec", ns, "python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", dir]))
            if dhcpOn.contains(port) { try startDHCPServer(port) }
            // Bounded wait for the server, probed from inside its own namespace.
            let ready = Self.waitUntil(.seconds(10), every: 0.05) {
                (try? NetworkNamespace.run(ns) { try HTTPProbe.get(Self.probe, device: nil, timeout: .milliseconds(200)) }) == side
            }
            guard ready != nil else { throw HarnessError.timeout("http.server in \(ns)") }
        }
    }

    /// dnsmasq as a DHCP server only (port=0: no DNS), bound to the upstream veth, one address
    /// to hand out so the lease is predictable, its files in the test's directory. It daemonizes
    /// (and closes every inherited descriptor, which confuses Foundation's Process), so it is
    /// started and waited for like a command and later killed by the PID in its pid file.
    func startDHCPServer(_ port: String) throws {
        let n = subnet(port)
        let address = leaseAddress(port)
        let prefix = sharedSubnet ? "10.0.2" : "10.\(n).0"
        let pidFile = "\(workDir)/\(port).dnsmasq.pid"
        let daemon = try ChildProcess(["/usr/sbin/ip", "netns", "exec", upstream(port), "dnsmasq", "--conf-file=/dev/null",
               "--no-resolv", "--no-hosts", "--port=0", "--user=root", "--group=root",
               "--interface=\(peer(port))", "--bind-interfaces", "--dhcp-authoritative",
               "--dhcp-range=\(address),\(address),255.255.255.0,2m",
               "--dhcp-option=option:router,\(gateway(port))", "--dhcp-option=option:dns-server,\(prefix).53",
               "--dhcp-leasefile=\(workDir)/\(port).leases", "--pid-file=\(pidFile)",
               "--log-dhcp", "--log-facility=\(workDir)/\(port).dnsmasq.log"])
        guard daemon.wait(.seconds(10)) == 0 else {
            daemon.terminate()
            throw HarnessError.command("dnsmasq in \(upstream(port)) did not start; see \(workDir)/\(port).dnsmasq.log")
        }
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else {
            throw HarnessError.command("dnsmasq in \(upstream(port)): no pid file")
        }
        dnsmasq[port] = pid
    }

    /// Kills that port's dnsmasq by its PID and waits (bounded) until it is gone.
    func stopDHCPServer(_ port: String) {
        guard let pid = dnsmasq.removeValue(forKey: port) else { return }
        kill(pid, SIGTERM)
        if Self.waitUntil(.seconds(3), every: 0.02, { !processAlive(pid) }) == nil { kill(pid, SIGKILL) }
    }

    private func spawn(_ arguments: [String]) throws -> ChildProcess {
        try ChildProcess(["/usr/sbin/ip"] + arguments)
    }

    /// Kills what this harness started, by PID, and deletes exactly the namespaces it made.
    func tearDown() {
        for port in Array(dnsmasq.keys) { stopDHCPServer(port) }
        for p in processes { p.terminate() }
        processes = []
        linkControl = [:]
        for port in Self.ports { _ = try? sh("ip", "netns", "del", upstream(port)) }
        _ = try? sh("ip", "netns", "del", device)
        try? FileManager.default.removeItem(atPath: workDir)
    }

    /// Cuts or restores a port's carrier by taking its upstream peer down or up.
    func setCarrier(_ port: String, _ up: Bool) throws {
        if linkControl[port] == nil {
            let p = try ChildProcess(["/usr/sbin/ip", "-n", upstream(port), "-force", "-batch", "-"], withInput: true)
            processes.append(p)
            linkControl[port] = p
        }
        guard let p = linkControl[port], p.isRunning else { throw HarnessError.command("ip -batch for \(port) exited") }
        try p.write("link set \(peer(port)) \(up ? "up" : "down")\n")
    }

    func setEthCarrier(_ up: Bool) throws { try setCarrier("eth0", up) }

    /// The probe's answer or its error, for diagnosing a failed probe.
    func probeOutcome(timeout: Duration) -> String {
        do { return try NetworkNamespace.run(device) { try HTTPProbe.get(Self.probe, device: nil, timeout: timeout) } } catch {
            return "\(error)"
        }
    }

    /// One probe from the device namespace through whatever the default route says.
    func probeViaDefaultRoute(timeout: Duration = .milliseconds(50)) -> String? {
        try? NetworkNamespace.run(device) { try HTTPProbe.get(Self.probe, device: nil, timeout: timeout) }
    }

    func options(holdDown: Duration) -> ManagerOptions {
        var options = ManagerOptions(namespace: device, resolvConfPath: workDir + "/resolv.conf")
        options.holdDown = holdDown
        options.startupSettle = .milliseconds(1500)
        options.probeInterval = .milliseconds(50)
        options.probeTimeout = .milliseconds(200)
        options.dhcp.initialRetry = .milliseconds(500)
        options.dhcp.maximumRetry = .seconds(2)
        return options
    }

    func manager(holdDown: Duration, config: String = NamespaceHarness.staticConfig) throws -> NetworkManager {
        NetworkManager(config: try NetworkConfig(json: Data(config.utf8)), options: options(holdDown: holdDown))
    }

    /// A service whose bootstrap file (written when `bootstrap` is given) and state live in the work directory.
    func service(bootstrap: String?, holdDown: Duration = .seconds(1)) throws -> NetworkService {
        let configPath = workDir + "/network.json"
        if let bootstrap { try Data(bootstrap.utf8).write(to: URL(fileURLWithPath: configPath)) }
        try FileManager.default.createDirectory(atPath: workDir + "/persist", withIntermediateDirectories: true)
        let o = options(holdDown: holdDown)
        var so = NetworkService.Options()
        so.holdDown = o.holdDown
        so.startupSettle = o.startupSettle
        so.probeInterval = o.probeInterval
        so.probeTimeout = o.probeTimeout
        so.dhcp = o.dhcp
        so.rememberPoll = .milliseconds(100)
        return NetworkService(configPath: configPath, stateDirectory: workDir + "/persist",
                              resolvConfPath: workDir + "/resolv.conf", namespace: device, options: so)
    }

    func defaultRoute() -> String { (try? sh("ip", "-n", device, "route", "show", "default", "metric", "0")) ?? "" }

    /// Waits (bounded) until `condition` holds; returns the time it took, or nil on timeout.
    /// `every` is in seconds, as the suites have always written it.
    @discardableResult
    static func waitUntil(_ limit: Duration, every: Double = 0.005, _ condition: () -> Bool) -> Duration? {
        OutpostTestSupport.waitUntil(limit, every: .nanoseconds(Int64(every * 1e9)), condition)
    }
}

enum HarnessError: Error { case timeout(String), command(String) }
