/// A bound lease and its timers (RFC 2131 §4.4.5): renew with the server at T1, ask any server
/// at T2, and give the address up at expiry. Pure, so the timer rules are unit-tested.
public struct DHCPLease: Equatable, Sendable {
    public let address: IPv4
    public let prefixLength: Int
    public let router: IPv4?
    public let dns: [IPv4]
    public let server: IPv4
    /// nil for an infinite lease (0xffffffff).
    public let leaseTime: Duration?
    public let renewAfter: Duration?
    public let rebindAfter: Duration?
    public let acquired: ContinuousClock.Instant

    public enum Phase: Equatable, Sendable { case bound, renewing, rebinding, expired }

    /// Builds a lease from an ACK; nil when the ACK lacks what a lease needs (address, server).
    public init?(ack: DHCPMessage, at now: ContinuousClock.Instant) {
        guard ack.options.messageType == .ack, ack.yiaddr.value != 0, let server = ack.options.serverIdentifier else { return nil }
        address = ack.yiaddr
        prefixLength = ack.options.subnetMask.map(Self.prefixLength(of:)) ?? Self.classfulPrefix(ack.yiaddr)
        router = ack.options.routers.first
        dns = Array(ack.options.dnsServers.prefix(3))
        self.server = server
        acquired = now
        guard let seconds = ack.options.leaseSeconds, seconds != UInt32.max else {
            leaseTime = nil; renewAfter = nil; rebindAfter = nil
            return
        }
        // Defaults 0.5 and 0.875 of the lease; a server's T1/T2 are kept only when ordered sensibly.
        let lease = Double(max(seconds, 1))
        var t1 = ack.options.renewalSeconds.map(Double.init) ?? lease * 0.5
        var t2 = ack.options.rebindingSeconds.map(Double.init) ?? lease * 0.875
        if !(t2 <= lease) { t2 = lease * 0.875 }
        if !(t1 <= t2) { t1 = t2 * 0.5 / 0.875 }
        leaseTime = .seconds(lease)
        renewAfter = .seconds(t1)
        rebindAfter = .seconds(t2)
    }

    public func phase(at now: ContinuousClock.Instant) -> Phase {
        let age = acquired.duration(to: now)
        guard let leaseTime, let renewAfter, let rebindAfter else { return .bound }
        if age >= leaseTime { return .expired }
        if age >= rebindAfter { return .rebinding }
        if age >= renewAfter { return .renewing }
        return .bound
    }

    /// When the next phase starts, or nil for an infinite lease.
    public func nextDeadline(at now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard let leaseTime, let renewAfter, let rebindAfter else { return nil }
        switch phase(at: now) {
        case .bound: return acquired + renewAfter
        case .renewing: return acquired + rebindAfter
        case .rebinding, .expired: return acquired + leaseTime
        }
    }

    /// Seconds of validity left, for the kernel's address lifetime.
    public func secondsLeft(at now: ContinuousClock.Instant) -> UInt32? {
        guard let leaseTime else { return nil }
        let left = leaseTime - acquired.duration(to: now)
        return UInt32(clamping: max(0, left.components.seconds))
    }

    public var addressing: PortAddressing {
        PortAddressing(address: address, prefixLength: prefixLength, gateway: router, dns: dns)
    }

    static func prefixLength(of mask: IPv4) -> Int {
        let v = mask.value
        let ones = v.leadingZeroBitCount == 0 ? (~v).leadingZeroBitCount : 0
        // A non-contiguous mask is nonsense; count its leading ones and carry on.
        return max(1, min(32, ones))
    }

    static func classfulPrefix(_ address: IPv4) -> Int {
        switch address.octets[0] {
        case 0..<128: return 8
        case 128..<192: return 16
        default: return 24
        }
    }
}
