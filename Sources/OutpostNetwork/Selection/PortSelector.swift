/// What the manager knows about one port at an instant. A port is usable only when all four
/// hold: carrier alone says nothing about whether the controller is reachable through it.
public struct PortObservation: Equatable, Sendable {
    public var carrier: Bool
    public var hasAddress: Bool
    public var hasGateway: Bool
    public var probeOK: Bool

    public init(carrier: Bool = false, hasAddress: Bool = false, hasGateway: Bool = false, probeOK: Bool = false) {
        self.carrier = carrier
        self.hasAddress = hasAddress
        self.hasGateway = hasGateway
        self.probeOK = probeOK
    }

    public var usable: Bool { carrier && hasAddress && hasGateway && probeOK }
}

/// The selector's answer: which port carries the default route, and whether that changed.
public struct SelectionDecision: Equatable, Sendable {
    public let active: String?
    public let changed: Bool
    /// When a better port is waiting out its hold-down, evaluate again after this long.
    public let recheckAfter: Duration?
}

/// Chooses the port for the default route. Pure: inputs are observations and the time, so every
/// rule (failover at once, return only after a hold-down, bounded changes under flapping) is
/// unit-tested without a kernel.
///
/// Failing over is immediate because any usable port beats none. Returning to a cheaper port
/// waits until it has been usable for `holdDown` without interruption, so a link that flaps
/// faster than the hold-down never takes the route back: route changes are bounded by
/// 1 + elapsed / holdDown, whatever the flap rate.
public struct PortSelector: Sendable {
    /// Port names with their cost; ties keep this order.
    public let ports: [(name: String, cost: Int)]
    public let holdDown: Duration
    /// After the first update, a cheaper port may take over without hold-down for this long:
    /// ports come up in any order at boot (whichever lease arrives first), and there is no
    /// flapping history yet to protect against.
    public let startupSettle: Duration
    private var settleEnd: ContinuousClock.Instant?
    public private(set) var active: String?
    public private(set) var routeChanges = 0
    private var usableSince: [String: ContinuousClock.Instant] = [:]

    public init(ports: [(name: String, cost: Int)], holdDown: Duration, startupSettle: Duration = .zero) {
        self.startupSettle = startupSettle
        self.ports = ports.enumerated()
            .sorted { ($0.element.cost, $0.offset) < ($1.element.cost, $1.offset) }
            .map(\.element)
        self.holdDown = holdDown
    }

    private func cost(_ name: String) -> Int { ports.first { $0.name == name }?.cost ?? Int.max }

    /// Feeds the current observations; ports missing from `observations` count as unusable.
    public mutating func update(_ observations: [String: PortObservation], now: ContinuousClock.Instant) -> SelectionDecision {
        for port in ports {
            if observations[port.name]?.usable == true {
                if usableSince[port.name] == nil { usableSince[port.name] = now }
            } else {
                usableSince[port.name] = nil
            }
        }
        let previous = active
        if settleEnd == nil { settleEnd = now + startupSettle }
        let settling = settleEnd.map { now < $0 } ?? false
        if let current = active, usableSince[current] != nil {
            // Stay unless a cheaper port has been usable for the whole hold-down.
            if let better = ports.first(where: { port in
                port.cost < cost(current) && usableSince[port.name].map { settling || $0.duration(to: now) >= holdDown } == true
            }) {
                active = better.name
            }
        } else {
            // Lost (or never had) the active port: take the best usable one at once.
            active = ports.first { usableSince[$0.name] != nil }?.name
        }
        // A cheaper port still inside its hold-down needs a timer, not another event.
        var recheck: Duration?
        if let chosen = active {
            for port in ports where port.cost < cost(chosen) {
                guard let since = usableSince[port.name] else { continue }
                let remaining = holdDown - since.duration(to: now)
                recheck = recheck.map { min($0, remaining) } ?? remaining
            }
        }
        let changed = active != previous
        if changed { routeChanges += 1 }
        return SelectionDecision(active: active, changed: changed, recheckAfter: recheck)
    }
}
