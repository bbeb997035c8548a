import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostNetwork

/// QEMU user-mode networking gives every NIC the same subnet, gateway and address
/// (10.0.2.15/24 via 10.0.2.2). Failover must still work: per-port metrics on the prefix and
/// default routes keep the ports apart, and ignore_routes_with_linkdown makes the kernel skip
/// the dead port's routes.
extension FailoverTests {
    @Test func portsSharingOneSubnetAndAddressStillFailOverUnderOneSecond() throws {
        let net = try NamespaceHarness(sharedSubnet: true)
        defer { net.tearDown() }
        let manager = try net.manager(holdDown: .seconds(1), config: NamespaceHarness.dhcpConfig())
        try manager.start()
        defer { manager.stop() }
        try #require(NamespaceHarness.waitUntil(.seconds(10)) {
            manager.snapshot().active == "eth0" && manager.snapshot().ports["wlan0"]?.usable == true
        } != nil)
        for port in NamespaceHarness.ports {
            #expect(manager.snapshot().reports[port]?.addressing?.address.description == "10.0.2.15")
        }
        let routes = try sh("ip", "-n", net.device, "-4", "route", "show", "10.0.2.0/24")
        #expect(routes.contains("dev eth0") && routes.contains("metric 100"), "\(routes)")
        #expect(routes.contains("dev wlan0") && routes.contains("metric 101"), "\(routes)")
        #expect(try sh("ip", "netns", "exec", net.device, "cat", "/proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown").hasPrefix("1"))
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "eth0-side")

        Thread.sleep(forTimeInterval: 2.5)
        let cut = ContinuousClock.now
        try net.setCarrier("eth0", false)
        let latency = NamespaceHarness.waitUntil(.seconds(3), every: 0) { net.probeViaDefaultRoute(timeout: .milliseconds(20)) == "wlan0-side" }
        print("shared subnet: carrier drop → first probe through wlan0 \(latency.map { "\($0)" } ?? "timeout")")
        #expect(try #require(latency) < .seconds(1))
        #expect(NamespaceHarness.waitUntil(.seconds(1)) { manager.snapshot().active == "wlan0" } != nil)
        #expect(net.defaultRoute().contains("via 10.0.2.2 dev wlan0"))

        try net.setCarrier("eth0", true)
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "eth0" } != nil)
        #expect(NamespaceHarness.waitUntil(.seconds(2)) { net.probeViaDefaultRoute(timeout: .milliseconds(100)) == "eth0-side" } != nil)
    }
}
