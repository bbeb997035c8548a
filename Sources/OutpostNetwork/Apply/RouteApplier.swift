import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// What a port has to reach the world: from its static settings or from a DHCP lease.
public struct PortAddressing: Equatable, Sendable {
    public var address: IPv4
    public var prefixLength: Int
    public var gateway: IPv4?
    public var dns: [IPv4]

    public init(address: IPv4, prefixLength: Int, gateway: IPv4?, dns: [IPv4]) {
        self.address = address
        self.prefixLength = prefixLength
        self.gateway = gateway
        self.dns = dns
    }
}

/// Puts decisions into effect through libnl (the device image has no iproute2).
///
/// Routes, per port of preference rank r:
///
///     prefix   a.b.c.0/n dev PORT  src ADDR  metric 100+r   (own route: the address has NOPREFIXROUTE)
///     standby  default via GW dev PORT       metric 1000+r  (lets a probe pinned to PORT leave)
///     active   default via GW dev PORT       metric 0       (only the chosen port; the one that moves)
///
/// Per-port metrics on prefix routes keep ports that share one subnet apart (QEMU user-mode
/// networking gives every NIC 10.0.2.15/24), and with ignore_routes_with_linkdown the kernel
/// skips a port's routes as soon as its carrier drops, before the manager even reacts.
/// One instance per thread: its netlink socket belongs to the creating thread's namespace.
final class RouteApplier {
    static let activeMetric: UInt32 = 0
    static func prefixMetric(rank: Int) -> UInt32 { 100 + UInt32(rank) }
    static func standbyMetric(rank: Int) -> UInt32 { 1000 + UInt32(rank) }

    let resolvConfPath: String
    private let kernel: RouteSocket

    init(resolvConfPath: String) throws(NetworkApplyError) {
        self.resolvConfPath = resolvConfPath
        kernel = try RouteSocket()
    }

    /// Kernel settings the failover relies on, for the calling thread's namespace.
    static func setSysctls() throws(NetworkApplyError) {
        for (path, value) in [("/proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown", "1"),
                              ("/proc/sys/net/ipv4/conf/default/ignore_routes_with_linkdown", "1")] {
            do throws(SystemError) { try FileIO.writeInPlace(value + "\n", to: path) } catch { throw .file(error) }
        }
    }

    func hardwareAddress(_ name: String) throws(NetworkApplyError) -> [UInt8] { try kernel.hardwareAddress(name) }

    /// Renames the link carrying `mac` to `name` (down, rename, up) when the kernel named it otherwise.
    /// Returns the old name when a rename happened.
    func renameByMAC(_ mac: String, to name: String) throws(NetworkApplyError) -> String? {
        let links = try kernel.linksByMAC()
        guard let holder = links.first(where: { $0.mac == mac }) else { return nil }
        guard holder.name != name else { return nil }
        if links.contains(where: { $0.name == name }) { throw .nameTaken(name: name, mac: mac) }
        try kernel.setLink(holder.name, up: false)
        try kernel.setLink(holder.name, up: false, rename: name)
        try kernel.setLink(name, up: true)
        return holder.name
    }

    /// Brings a port up and puts its static settings in place; a DHCP port starts with no
    /// address, so a stale one from an earlier configuration cannot make it look usable.
    func prepare(_ port: PortConfig, rank: Int) throws(NetworkApplyError) {
        try kernel.setLink(port.name, up: true)
        try removeDefaultRoutes(port.name, rank: rank)
        if case .staticAddress(let address, let prefix, let gateway, let dns) = port.mode {
            try kernel.flushAddresses(on: port.name, keeping: (address, prefix))
            try install(port.name, rank: rank, PortAddressing(address: address, prefixLength: prefix, gateway: gateway, dns: dns))
        } else {
            try kernel.flushAddresses(on: port.name)
        }
    }

    /// Installs an address with its prefix and standby routes; `lifetime` for leases.
    func install(_ name: String, rank: Int, _ a: PortAddressing, lifetime: UInt32? = nil) throws(NetworkApplyError) {
        try kernel.flushAddresses(on: name, keeping: (a.address, a.prefixLength))
        try kernel.addAddress(a.address, prefixLength: a.prefixLength, on: name, lifetime: lifetime)
        if a.prefixLength < 32 {
            try kernel.replaceRoute(a.address.masked(a.prefixLength), prefixLength: a.prefixLength, gateway: nil,
                                    device: name, metric: Self.prefixMetric(rank: rank), source: a.address)
        }
        if let gateway = a.gateway {
            if a.prefixLength == 32 || gateway.masked(a.prefixLength) != a.address.masked(a.prefixLength) {
                // A gateway outside the subnet (some carriers do this) needs an on-link host route first.
                try kernel.replaceRoute(gateway, prefixLength: 32, gateway: nil, device: name,
                                        metric: Self.prefixMetric(rank: rank), source: a.address)
            }
            try kernel.replaceRoute(IPv4(value: 0), prefixLength: 0, gateway: gateway, device: name,
                                    metric: Self.standbyMetric(rank: rank), source: a.address)
        }
    }

    /// Takes a port's address and routes away (a lost lease, a port leaving the configuration).
    func clear(_ name: String, rank: Int) throws(NetworkApplyError) {
        try removeDefaultRoutes(name, rank: rank)
        try kernel.flushAddresses(on: name)
    }

    private func removeDefaultRoutes(_ name: String, rank: Int) throws(NetworkApplyError) {
        try kernel.deleteRoute(IPv4(value: 0), prefixLength: 0, device: name, metric: Self.activeMetric)
        try kernel.deleteRoute(IPv4(value: 0), prefixLength: 0, device: name, metric: Self.standbyMetric(rank: rank))
    }

    /// Points the active default route and DNS at `name`, or removes the route when nothing is usable.
    func activate(_ name: String?, addressing: PortAddressing?) throws(NetworkApplyError) {
        guard let name, let addressing, let gateway = addressing.gateway else {
            try kernel.deleteRoute(IPv4(value: 0), prefixLength: 0, device: nil, metric: Self.activeMetric)
            return
        }
        try kernel.replaceRoute(IPv4(value: 0), prefixLength: 0, gateway: gateway, device: name,
                                metric: Self.activeMetric, source: addressing.address)
        try writeResolvConf(addressing.dns)
    }

    /// Writes resolv.conf atomically (temp + rename), so resolvers never read half a file.
    func writeResolvConf(_ servers: [IPv4]) throws(NetworkApplyError) {
        let text = "# written by outpostd: DNS follows the active port\n" + servers.map { "nameserver \($0)\n" }.joined()
        do throws(SystemError) { try FileIO.writeAtomically(Array(text.utf8), to: resolvConfPath) } catch { throw .file(error) }
    }
}
