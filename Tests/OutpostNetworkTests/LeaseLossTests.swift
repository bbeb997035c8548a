import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostNetwork

/// Lease timers against a server with 4 s leases (T1 2 s, T2 3.5 s): renewals keep the port
/// without route changes; a server that goes away means a lost lease at expiry, which makes
/// the port unusable and moves traffic; a server that returns gives the lease back.
extension FailoverTests {
    private static let dhcpdScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("short-lease-dhcpd.py").path

    private func startShortLeaseServer(_ net: NamespaceHarness, log: String) throws -> ChildProcess {
        let server = try ChildProcess(["/usr/sbin/ip", "netns", "exec", net.upstream("eth0"), "python3", Self.dhcpdScript,
                                       "--device", net.peer("eth0"), "--server", "10.1.0.1", "--address", "10.1.0.100",
                                       "--lease", "4", "--log", log])
        guard NamespaceHarness.waitUntil(.seconds(10), every: 0.05, {
            (try? String(contentsOfFile: log, encoding: .utf8))?.contains("listening") == true
        }) != nil else {
            server.terminate()
            throw HarnessError.timeout("short-lease DHCP server")
        }
        return server
    }

    @Test func shortLeasesRenewWithoutRouteChangesAndALostLeaseMovesTrafficToWlan0() throws {
        let net = try NamespaceHarness(dhcpOn: ["wlan0", "wwan0"])
        defer { net.tearDown() }
        let log = net.workDir + "/short-lease.log"
        var server = try startShortLeaseServer(net, log: log)
        defer { server.terminate() }
        let manager = try net.manager(holdDown: .seconds(1), config: NamespaceHarness.dhcpConfig())
        try manager.start()
        defer { manager.stop() }
        try #require(NamespaceHarness.waitUntil(.seconds(10)) { manager.snapshot().active == "eth0" } != nil)
        let changes = manager.snapshot().routeChanges

        // Three lease lifetimes: renewals (unicast REQUEST with ciaddr) keep eth0 with no route change.
        Thread.sleep(forTimeInterval: 9)
        let renewals = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").filter { $0.hasPrefix("REQUEST ciaddr=10.1.0.100") }
        #expect(renewals.count >= 3, "renewals: \(renewals.count)")
        #expect(manager.snapshot().routeChanges == changes)
        #expect(manager.snapshot().active == "eth0")

        // The server goes away: after T1/T2 retries the lease expires (≤ 4 s), eth0 becomes unusable.
        server.terminate()
        let lost = NamespaceHarness.waitUntil(.seconds(8)) { manager.snapshot().active == "wlan0" }
        print("lease loss: traffic on wlan0 \(lost.map { "\($0)" } ?? "never") after the server stopped")
        #expect(lost != nil)
        #expect(NamespaceHarness.waitUntil(.seconds(1)) { manager.snapshot().reports["eth0"]?.addressing == nil } != nil)
        #expect(manager.snapshot().reports["eth0"]?.lastLeaseLoss == "dhcp eth0: lease on 10.1.0.100 expired",
                "\(manager.snapshot().reports["eth0"]?.lastLeaseLoss ?? "-")")
        #expect(!(try sh("ip", "-n", net.device, "-4", "addr", "show", "dev", "eth0")).contains("10.1.0.100"))
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "wlan0-side")

        // The server returns: the client's bounded retries find it and eth0 comes back after the hold-down.
        server = try startShortLeaseServer(net, log: log)
        #expect(NamespaceHarness.waitUntil(.seconds(10)) { manager.snapshot().active == "eth0" } != nil)
    }
}
