import OutpostTestSupport
import Testing
@testable import OutpostNetwork

private let up = PortObservation(carrier: true, hasAddress: true, hasGateway: true, probeOK: true)
private let down = PortObservation()
private let t0 = ContinuousClock.now

private func at(_ ms: Int) -> ContinuousClock.Instant { t0 + .milliseconds(ms) }

private func selector() -> PortSelector {
    PortSelector(ports: [("wlan0", 20), ("eth0", 10), ("wwan0", 100)], holdDown: .seconds(5))
}

@Test func cheapestUsablePortIsChosenAtStart() {
    var s = selector()
    let d = s.update(["eth0": up, "wlan0": up, "wwan0": up], now: at(0))
    #expect(d.active == "eth0")
}

@Test func portWithoutProbeAddressOrGatewayIsNotUsable() {
    var s = selector()
    var noProbe = up; noProbe.probeOK = false
    var noAddress = up; noAddress.hasAddress = false
    var noGateway = up; noGateway.hasGateway = false
    let none = s.update(["eth0": noProbe, "wlan0": noAddress, "wwan0": noGateway], now: at(0))
    #expect(none.active == nil)
    let wwan = s.update(["eth0": noProbe, "wlan0": noAddress, "wwan0": up], now: at(1))
    #expect(wwan.active == "wwan0")
}

@Test func carrierLossMovesToNextPortAtOnce() {
    var s = selector()
    _ = s.update(["eth0": up, "wlan0": up], now: at(0))
    let d = s.update(["eth0": down, "wlan0": up], now: at(1))
    #expect(d.active == "wlan0" && d.changed)
}

@Test func betterPortReturnsOnlyAfterHoldDown() {
    var s = selector()
    _ = s.update(["eth0": up, "wlan0": up], now: at(0))
    _ = s.update(["eth0": down, "wlan0": up], now: at(100))
    let back = s.update(["eth0": up, "wlan0": up], now: at(1000))
    #expect(back.active == "wlan0")
    #expect(back.recheckAfter == .seconds(5))
    let early = s.update(["eth0": up, "wlan0": up], now: at(5999))
    #expect(early.active == "wlan0")
    let d = s.update(["eth0": up, "wlan0": up], now: at(6000))
    #expect(d.active == "eth0" && d.changed)
}

@Test func flappingAtTenHertzCausesOneRouteChangeInTenSeconds() {
    var s = selector()
    _ = s.update(["eth0": up, "wlan0": up], now: at(0))
    let before = s.routeChanges
    for i in 0..<200 { // 10 s of 50 ms down / 50 ms up
        _ = s.update(["eth0": i % 2 == 0 ? down : up, "wlan0": up], now: at(1000 + i * 50))
    }
    #expect(s.routeChanges - before == 1)
    #expect(s.active == "wlan0")
}

@Test func returnsToCheaperPortAreBoundedByElapsedOverHoldDownForAnyFlapPattern() {
    var rng = SplitMix64.forTest()
    let cost = ["eth0": 10, "wlan0": 20, "wwan0": 100]
    for _ in 0..<50 {
        var s = selector()
        var ms = 0
        var returns = 0
        for _ in 0..<500 {
            ms += Int.random(in: 1...400, using: &rng)
            let previous = s.active
            let obs = ["eth0": Bool.random(using: &rng) ? up : down, "wlan0": Bool.random(using: &rng) ? up : down, "wwan0": up]
            let d = s.update(obs, now: at(ms))
            // A move to a cheaper port while the old one still works is a hold-down return.
            if d.changed, let p = previous, let n = d.active, cost[n, default: 0] < cost[p, default: 0], obs[p]?.usable == true {
                returns += 1
            }
            #expect(d.active != nil)
        }
        #expect(returns <= ms / 5000 + 1, "seed \(rng.seed)")
    }
}

@Test func losingEveryPortClearsTheActivePort() {
    var s = selector()
    _ = s.update(["eth0": up], now: at(0))
    let d = s.update(["eth0": down], now: at(10))
    #expect(d.active == nil && d.changed)
}

@Test func duringStartupSettleACheaperPortTakesOverAtOnceAndAfterItOnlyAfterHoldDown() {
    var s = PortSelector(ports: [("eth0", 10), ("wlan0", 20), ("wwan0", 30)], holdDown: .seconds(5), startupSettle: .seconds(3))
    #expect(s.update(["wwan0": up], now: at(0)).active == "wwan0")
    #expect(s.update(["wwan0": up, "wlan0": up], now: at(500)).active == "wlan0")
    #expect(s.update(["wwan0": up, "wlan0": up, "eth0": up], now: at(2999)).active == "eth0")
    // After the window, a loss and return pays the full hold-down again.
    #expect(s.update(["wwan0": up, "wlan0": up, "eth0": down], now: at(4000)).active == "wlan0")
    #expect(s.update(["wwan0": up, "wlan0": up, "eth0": up], now: at(4100)).active == "wlan0")
    #expect(s.update(["wwan0": up, "wlan0": up, "eth0": up], now: at(9100)).active == "eth0")
}
