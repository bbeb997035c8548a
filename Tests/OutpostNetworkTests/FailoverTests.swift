import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostNetwork

/// Host tests in network namespaces: need root and iproute2; serialised because each one
/// cuts links on a timeline.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root for network namespaces"))
struct FailoverTests {
    @Test func carrierLossMovesDefaultRouteToWlan0AndProbeSucceedsUnderOneSecond() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let manager = try net.manager(holdDown: .seconds(1))
        try manager.start()
        defer { manager.stop() }
        try #require(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "eth0" } != nil)
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "eth0-side")
        #expect(try sh("ip", "-n", net.device, "route", "show", "default", "metric", "0").contains("dev eth0"))

        // Let eth0 settle as in the field: see the linkwatch note in benchmarkCarrierCuts.
        Thread.sleep(forTimeInterval: 2.5)
        let cut = ContinuousClock.now
        try net.setEthCarrier(false)
        let latency = NamespaceHarness.waitUntil(.seconds(3), every: 0) { net.probeViaDefaultRoute(timeout: .milliseconds(20)) == "wlan0-side" }
            .map { _ in cut.duration(to: .now) }
        let switched = manager.snapshot().changes.last.map { cut.duration(to: $0.at) }
        print("failover: carrier drop → route on wlan0 \(switched.map { "\($0)" } ?? "-"), → first probe through wlan0 \(latency.map { "\($0)" } ?? "timeout")")
        let measured = try #require(latency)
        #expect(measured < .seconds(1))
        // The kernel may route around the dead link first (ignore_routes_with_linkdown); the manager follows within the second.
        #expect(NamespaceHarness.waitUntil(.seconds(1)) { manager.snapshot().active == "wlan0" } != nil)
        #expect(try sh("ip", "-n", net.device, "route", "show", "default", "metric", "0").contains("dev wlan0"))
        #expect(try String(contentsOfFile: net.workDir + "/resolv.conf", encoding: .utf8).contains("nameserver 10.2.0.53"))

        // eth0 returns, but only once it has been usable for the hold-down.
        let restored = ContinuousClock.now
        try net.setEthCarrier(true)
        let back = try #require(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "eth0" })
        print("failover: eth0 restored → route back after \(back) (hold-down 1 s)")
        #expect(back >= .milliseconds(950))
        // Hold-down, plus up to ~1 s of kernel linkwatch batching of the carrier-up event.
        #expect(restored.duration(to: .now) < .milliseconds(3500))
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "eth0-side")
        #expect(manager.snapshot().lastError == nil)
    }

    /// A loss and return of carrier that reach the watcher in one batch (the agent's thread was
    /// busy, or the host loaded) leave the link's final state unchanged; the watcher must still
    /// say it bounced, or a flapping link would look stable to the selector's hold-down.
    @Test func aCarrierLossAndReturnReadInOneBatchIsReportedAsABounce() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let upstream = net.upstream("eth0"), peer = net.peer("eth0")
        try sh("ip", "-n", upstream, "link", "set", peer, "up")
        try sh("ip", "-n", net.device, "link", "set", "eth0", "up")
        let seen = try NetworkNamespace.run(net.device) { () throws -> (carrier: Bool, bounced: Set<String>, quiet: Set<String>) in
            let watcher = try LinkWatcher()
            try waitFor("eth0 carrier", within: .seconds(5), every: .milliseconds(50)) {
                _ = try? watcher.drain()
                return watcher.links["eth0"]?.carrier == true
            }
            try sh("ip", "-n", upstream, "link", "set", peer, "down")
            try sh("ip", "-n", upstream, "link", "set", peer, "up")
            // Both events are queued on the socket well within the kernel's ~1 s link-event batching.
            Thread.sleep(forTimeInterval: 1.5)
            _ = try watcher.drain()
            let bounced = watcher.bounced
            let carrier = watcher.links["eth0"]?.carrier == true
            _ = try watcher.drain()
            return (carrier, bounced, watcher.bounced)
        }
        #expect(seen.carrier, "eth0 should have carrier again")
        #expect(seen.bounced == ["eth0"], "bounced: \(seen.bounced)")
        #expect(seen.quiet.isEmpty, "a drain with no events reported \(seen.quiet)")
    }

    @Test func eth0FlappingTenTimesASecondCausesBoundedRouteChangesAndProbeKeepsWorking() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let manager = try net.manager(holdDown: .seconds(1))
        try manager.start()
        defer { manager.stop() }
        try #require(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "eth0" } != nil)
        let before = manager.snapshot().routeChanges
        // Let eth0 settle first, so the first cut is not held back by linkwatch batching.
        Thread.sleep(forTimeInterval: 2.5)

        let start = ContinuousClock.now
        // 60 cycles: 10 flaps a second for 6 s.
        let result = try flapEth0(net, cycles: 60)
        let changes = manager.snapshot().routeChanges - before
        print("flapping: \(start.duration(to: .now)), route changes \(changes), \(result.summary)")
        // One move to wlan0; a return needs a full hold-down of stable eth0, which never happens
        // unless the flapping thread itself stalls (counted in the result).
        expectBoundedFlapping(result, changes: changes)
        // Once eth0 is stable it returns after the hold-down.
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "eth0" } != nil)
    }

    /// Run by bench/failover.sh: N carrier cuts with every port on DHCP (OUTPOST_BENCH_CONFIG=static
    /// for static addressing). Reports the time to the first probe through wlan0 via the default
    /// route (what traffic sees) and to the manager's route change. Without OUTPOST_BENCH_CUTS it
    /// is reported as skipped rather than passing without having run.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["OUTPOST_BENCH_CUTS"].flatMap(Int.init).map { $0 > 0 } == true,
                   "a benchmark: bench/failover.sh sets OUTPOST_BENCH_CUTS"))
    func benchmarkCarrierCuts() throws {
        let env = ProcessInfo.processInfo.environment
        let n = try #require(env["OUTPOST_BENCH_CUTS"].flatMap(Int.init))
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let config = env["OUTPOST_BENCH_CONFIG"] == "static" ? NamespaceHarness.staticConfig : NamespaceHarness.dhcpConfig()
        let manager = try net.manager(holdDown: .milliseconds(300), config: config)
        try manager.start()
        defer { manager.stop() }
        var probeSamples: [Double] = []
        var routeSamples: [Double] = []
        var restored = ContinuousClock.now
        func ms(_ d: Duration) -> Double { Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1000 }
        for _ in 0..<min(n, 1000) {
            try #require(NamespaceHarness.waitUntil(.seconds(10)) { manager.snapshot().active == "eth0" } != nil)
            // The kernel's linkwatch batches non-urgent link events (carrier off is one) to about
            // one run a second, so a cut soon after the previous link event is reported up to
            // ~300 ms late (measured: 1.1 s after restore still was). Cut a link that has been
            // up for 2.5 s, as in the field; OUTPOST_BENCH_SETTLE_MS shows the other case.
            sleep(until: restored + .milliseconds(env["OUTPOST_BENCH_SETTLE_MS"].flatMap(Int.init) ?? 2500))
            try #require(NamespaceHarness.waitUntil(.seconds(2)) { net.probeViaDefaultRoute(timeout: .milliseconds(200)) == "eth0-side" } != nil)
            let changesBefore = manager.snapshot().routeChanges
            let cut = ContinuousClock.now
            try net.setEthCarrier(false)
            try #require(NamespaceHarness.waitUntil(.seconds(3), every: 0) { net.probeViaDefaultRoute(timeout: .milliseconds(20)) == "wlan0-side" } != nil)
            probeSamples.append(ms(cut.duration(to: .now)))
            try #require(NamespaceHarness.waitUntil(.seconds(3)) { manager.snapshot().routeChanges > changesBefore } != nil)
            let switched = manager.snapshot().changes.last.map { cut.duration(to: $0.at) } ?? .zero
            routeSamples.append(ms(switched))
            if env["OUTPOST_BENCH_VERBOSE"] != nil { print("cut: route switch \(switched), probe \(probeSamples.last ?? 0) ms") }
            try net.setEthCarrier(true)
            restored = .now
        }
        func pct(_ samples: [Double], _ p: Double) -> Double {
            let sorted = samples.sorted()
            return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
        }
        print(String(format: "BENCH failover cuts=%d probe p50=%.1fms p99=%.1fms max=%.1fms | route switch p50=%.1fms p99=%.1fms max=%.1fms",
                     probeSamples.count, pct(probeSamples, 0.5), pct(probeSamples, 0.99), probeSamples.max() ?? 0,
                     pct(routeSamples, 0.5), pct(routeSamples, 0.99), routeSamples.max() ?? 0))
        #expect(pct(probeSamples, 0.99) < 1000)
    }
}

private func sleep(until instant: ContinuousClock.Instant) {
    let left = ContinuousClock.now.duration(to: instant)
    guard left > .zero else { return }
    Thread.sleep(forTimeInterval: Double(left.components.seconds) + Double(left.components.attoseconds) / 1e18)
}
