import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostNetwork

/// Failover that carrier alone cannot see: the probe decides. Part of `FailoverTests` so all
/// namespace tests run one at a time: linkwatch is global, so a parallel test's link events
/// would delay this one's carrier notifications.
extension FailoverTests {
    @Test func failingProbeThroughEth0MovesTrafficToWlan0AndBackAfterHoldDown() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let manager = try net.manager(holdDown: .seconds(1))
        try manager.start()
        defer { manager.stop() }
        try #require(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "eth0" } != nil)
        Thread.sleep(forTimeInterval: 1.5) // past the startup settle, so the return pays the hold-down

        // The controller vanishes behind eth0; its carrier stays up.
        try sh("ip", "-n", net.upstreamEth, "addr", "del", "10.200.0.1/32", "dev", "lo")
        let moved = NamespaceHarness.waitUntil(.seconds(2)) { manager.snapshot().active == "wlan0" }
        print("probe failure → wlan0 after \(moved.map { "\($0)" } ?? "timeout")")
        #expect(moved != nil)
        #expect(manager.snapshot().ports["eth0"]?.carrier == true)
        #expect(manager.snapshot().lastProbeError["eth0"]?.hasPrefix("probe: ") == true)
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "wlan0-side")

        try sh("ip", "-n", net.upstreamEth, "addr", "add", "10.200.0.1/32", "dev", "lo")
        let back = NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "eth0" }
        #expect(back.map { $0 >= .milliseconds(950) } == true)
    }

    @Test func eth0WithoutCarrierAtStartUsesWlan0FromTheStart() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        try net.setEthCarrier(false)
        let manager = try net.manager(holdDown: .seconds(1))
        try manager.start()
        defer { manager.stop() }
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "wlan0" } != nil)
        Thread.sleep(forTimeInterval: 1.5)
        let status = manager.snapshot()
        #expect(status.changes.map(\.active) == ["wlan0"])
        #expect(status.ports["eth0"]?.carrier == false)
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "wlan0-side")
    }
}
