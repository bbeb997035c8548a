import Foundation
import Synchronization
import Testing
@testable import OutpostNetwork

/// The agent's facade: configuration choice at start, pushed configurations tested on arrival,
/// the last-known-good list across restarts, status and the console report.
extension FailoverTests {
    static let brokenConfig = """
    { "probe": "\(NamespaceHarness.probeURL)", "testTime": 2, "ports": {
        "eth0":  { "mode": "static", "address": "10.91.0.2/24", "gateway": "10.91.0.1", "cost": 10 },
        "wlan0": { "mode": "static", "address": "10.92.0.2/24", "gateway": "10.92.0.1", "cost": 20 },
        "wwan0": { "mode": "static", "address": "10.93.0.2/24", "gateway": "10.93.0.1", "cost": 30 } } }
    """

    @Test func pushedConfigBreakingEveryPortIsRolledBackWithinItsTestTimeAndLastKnownGoodSurvivesRestart() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let service = try net.service(bootstrap: NamespaceHarness.dhcpConfig())
        try service.start()
        var stopped = false
        defer { if !stopped { service.stop() } }
        try #require(NamespaceHarness.waitUntil(.seconds(10)) { service.activePort == "eth0" } != nil)
        #expect(service.isHealthy)
        // The bootstrap worked, so it became the first last-known-good entry.
        let store = LastKnownGoodStore(directory: net.workDir + "/persist")
        #expect(NamespaceHarness.waitUntil(.seconds(2)) { (try? store.load().count) == 1 } != nil)

        let pushed = ContinuousClock.now
        let result = service.push(Self.brokenConfig)
        let took = pushed.duration(to: .now)
        print("broken push: \(result) after \(took)")
        guard case .rolledBack(let why) = result else { Issue.record("\(result)"); return }
        #expect(why.contains("within 2.0 seconds"))
        #expect(took < .seconds(3))
        // The previous configuration is back and working.
        let back = NamespaceHarness.waitUntil(.seconds(3)) { net.probeViaDefaultRoute(timeout: .milliseconds(100)) == "eth0-side" }
        print("broken push: traffic through eth0 again \(back.map { "\($0)" } ?? "never") after the rollback")
        #expect(back != nil)
        #expect(NamespaceHarness.waitUntil(.seconds(2)) { service.activePort == "eth0" } != nil)
        #expect(service.statusJSON().contains("rolled back"))
        #expect(try store.load().count == 1)

        // A working push is applied and becomes the newest last-known-good.
        let preferWlan = NamespaceHarness.dhcpConfig(testTime: 5).replacingOccurrences(of: #""cost": 20"#, with: #""cost": 5"#)
        let applied = service.push(preferWlan)
        guard case .applied = applied else { Issue.record("\(applied)"); return }
        #expect(NamespaceHarness.waitUntil(.seconds(2)) { service.activePort == "wlan0" } != nil)
        #expect(try store.load().first?.ports.first { $0.name == "wlan0" }?.cost == 5)
        #expect(try store.load().count == 2)

        // Reboot: a new service with a different bootstrap starts from the last-known-good list.
        service.stop()
        stopped = true
        let rebooted = try net.service(bootstrap: NamespaceHarness.staticConfig)
        try rebooted.start()
        defer { rebooted.stop() }
        #expect(NamespaceHarness.waitUntil(.seconds(10)) { rebooted.activePort == "wlan0" } != nil)
        let status = try JSONSerialization.jsonObject(with: Data(rebooted.statusJSON().utf8)) as? [String: Any]
        #expect(status?["configOrigin"] as? String == "last-known-good")
    }

    @Test func malformedPushIsRejectedWithOneLineErrorInStatusAndPreviousConfigKept() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let service = try net.service(bootstrap: NamespaceHarness.staticConfig)
        try service.start()
        defer { service.stop() }
        try #require(NamespaceHarness.waitUntil(.seconds(10)) { service.activePort == "eth0" } != nil)

        for bad in [#"{ "ports": "#, #"{"ports": {"eth0": {"mode": "dhcp", "cost": true}}}"#] {
            let result = service.push(bad)
            guard case .rejected(let why) = result else { Issue.record("accepted: \(result)"); continue }
            #expect(!why.contains("\n") && why.hasPrefix("network config: "))
        }
        #expect(service.activePort == "eth0")
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "eth0-side")
        let json = service.statusJSON()
        let status = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect((status["configError"] as? String)?.contains("ports.eth0.cost") == true, "\(json)")
        #expect(status["active"] as? String == "eth0")
        let eth0 = try #require((status["ports"] as? [String: Any])?["eth0"] as? [String: Any])
        #expect(eth0["carrier"] as? Bool == true)
        #expect(eth0["address"] as? String == "10.1.0.2/24")
        #expect(eth0["gateway"] as? String == "10.1.0.1")
        #expect(eth0["dns"] as? [String] == ["10.1.0.53"])
        #expect(eth0["cost"] as? Int == 10)
        #expect(eth0["test"] as? String == "passed")
        #expect(eth0["lastChange"] is Int)
        let report = service.connectivityReport()
        print(report.joined(separator: "\n"))
        #expect(report.contains { $0.hasPrefix("eth0: carrier up, 10.1.0.2/24 via 10.1.0.1, dns 10.1.0.53, proxy none") })
        #expect(report.contains { $0.contains("config error") && $0.contains("ports.eth0.cost") })
    }

    @Test func malformedBootstrapWithoutLastKnownGoodFallsBackToAllPortsDHCPAndRecordsTheError() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let service = try net.service(bootstrap: #"{"ports": {"eth0": {"mode": "static", "cost": 1}}}"#)
        try service.start()
        defer { service.stop() }
        #expect(NamespaceHarness.waitUntil(.seconds(10)) { service.activePort == "eth0" } != nil)
        let status = try #require(try JSONSerialization.jsonObject(with: Data(service.statusJSON().utf8)) as? [String: Any])
        #expect((status["configOrigin"] as? String)?.hasPrefix("built-in default") == true)
        #expect((status["configError"] as? String)?.contains("ports.eth0.address: missing") == true)
        #expect((status["ports"] as? [String: Any])?.count == 3)
        #expect(service.isHealthy)
    }
}

extension FailoverTests {
    @Test func equalCostPortsAreAllOfferedToTheControllerClientAndARepeatedPushDisturbsNothing() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let equal = NamespaceHarness.dhcpConfig().replacingOccurrences(of: #""cost": 20"#, with: #""cost": 10"#)
        let service = try net.service(bootstrap: equal)
        try service.start()
        defer { service.stop() }
        #expect(NamespaceHarness.waitUntil(.seconds(10)) { service.controllerPorts == ["eth0", "wlan0"] } != nil, "\(service.controllerPorts)")
        try net.setCarrier("eth0", false)
        #expect(NamespaceHarness.waitUntil(.seconds(2)) { service.controllerPorts == ["wlan0"] } != nil)
        try net.setCarrier("eth0", true)
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { service.controllerPorts == ["eth0", "wlan0"] } != nil)

        let changes = try #require(service.snapshot().status?.routeChanges)
        #expect(service.push(equal) == .applied(activePort: service.activePort ?? "-"))
        #expect(service.snapshot().status?.routeChanges == changes)
    }
}

extension FailoverTests {
    /// A managed device's push: a port with carrier, address and route is not enough when the
    /// agent's acceptance check (its controller answering) refuses it for the whole test time.
    @Test func pushedConfigThatTheAcceptanceCheckRefusesIsRolledBackAndOneItAcceptsIsKept() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let service = try net.service(bootstrap: NamespaceHarness.dhcpConfig())
        try service.start()
        defer { service.stop() }
        try #require(NamespaceHarness.waitUntil(.seconds(10)) { service.activePort == "eth0" } != nil)
        let store = LastKnownGoodStore(directory: net.workDir + "/persist")
        #expect(NamespaceHarness.waitUntil(.seconds(2)) { (try? store.load().count) == 1 } != nil)

        let preferWlan = NamespaceHarness.dhcpConfig(testTime: 3).replacingOccurrences(of: #""cost": 20"#, with: #""cost": 5"#)
        // While on test the candidate is in force: the check sees its port and its controller ports.
        let asked = Mutex<[String]>([])
        let refused = service.push(preferWlan) { port in
            asked.withLock { $0.append("\(port) \(service.controllerPorts)") }
            return "controller 10.200.0.1:443 unreachable"
        }
        print("refused push: \(refused); asked \(asked.withLock { $0 })")
        guard case .rolledBack(let why) = refused else { Issue.record("\(refused)"); return }
        #expect(why.contains("not accepted within 3.0 seconds (wlan0: controller 10.200.0.1:443 unreachable)"), "\(why)")
        let questions = asked.withLock { $0 }
        #expect(questions.count >= 2 && questions.count <= 5, "asked about once a second: \(questions)")
        #expect(questions.allSatisfy { $0 == #"wlan0 ["wlan0"]"# }, "\(questions)")
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { service.activePort == "eth0" } != nil)
        #expect(service.statusJSON().contains("not accepted"))
        #expect(try store.load().count == 1, "a refused config is never last-known-good")

        let accepted = service.push(preferWlan) { _ in nil }
        guard case .applied(let port) = accepted else { Issue.record("\(accepted)"); return }
        #expect(port == "wlan0")
        #expect(try store.load().count == 2)
    }
}
