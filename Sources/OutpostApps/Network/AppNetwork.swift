// The local network of the app instances (the seed's "local" network instance):
//
//   app ─ virtio-net ─ tap oa<hash><n> ─┐
//   app ─ virtio-net ─ tap ...         ─┤ bridge outpost-apps 10.200.0.1/24 ── routing + NAT ── active uplink
//                                       └─ dnsmasq: DHCP (10.200.0.10-.250), DNS forwarded to the device's resolv.conf
//
// Debian parts do the work: the kernel bridge and taps (created by ioctl, the slot
// has no iproute2), nftables (`nft -f`) for masquerade and the per-tap ACL chains
// with a named counter per rule (see ACLRuleset), dnsmasq for DHCP and DNS, which
// also puts the addresses it answers for a `host` rule's name into that rule's set.
// dnsmasq reads the network manager's resolv.conf and rereads it when it changes,
// so names resolve through whichever uplink is active.
//
// Every call acts in the calling thread's network namespace (the host tests run it
// inside one); the processes it starts inherit that namespace.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform
import OutpostShims
import Synchronization

/// One tap of an app instance: QEMU opens it by name; the MAC is the guest NIC's.
public struct AppTap: Equatable, Sendable {
    /// The manifest interface it serves.
    public var interface: String
    public var name: String
    public var mac: String

    /// QEMU's options for this tap as NIC number `index` (`legacy`: an e1000 for guests without virtio).
    public func qemuArguments(index: Int, legacy: Bool) -> [String] {
        ["-netdev", "tap,id=net\(index),ifname=\(name),script=no,downscript=no",
         "-device", "\(legacy ? "e1000" : "virtio-net-pci"),netdev=net\(index),mac=\(mac)"]
    }
}

/// The bridge's place: its name and its address, which is the apps' router and DNS server.
public struct AppNetworkConfig: Equatable, Sendable {
    public var bridge: String
    /// The bridge's address.
    public var gateway: String
    public var prefixLength: Int

    public static let `default` = AppNetworkConfig(bridge: "outpost-apps", gateway: "10.200.0.1", prefixLength: 24)

    public init(bridge: String, gateway: String, prefixLength: Int) {
        self.bridge = bridge
        self.gateway = gateway
        self.prefixLength = prefixLength
    }

    /// The subnet the leases come from.
    public var subnet: IPRange? { IPRange("\(gateway)/\(prefixLength)") }

    /// The DHCP range: from the 10th address (or the one after the bridge) to the last before broadcast.
    public var leaseRange: (first: String, last: String)? {
        guard let subnet, !subnet.isIPv6, prefixLength <= 29, let gatewayBytes = IPRange(gateway)?.address else { return nil }
        let network = subnet.address.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let own = gatewayBytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let size = UInt32(1) << UInt32(32 - prefixLength)
        var first = network + min(10, size / 4)
        if first <= own { first = own + 1 }
        let last = network + size - 2
        guard first <= last else { return nil }
        return (Self.dotted(first), Self.dotted(last))
    }

    /// The netmask in dotted form (dnsmasq's dhcp-range wants it).
    public var netmask: String {
        Self.dotted(prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength))
    }

    static func dotted(_ value: UInt32) -> String { "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)" }
}

/// The bridge, the taps, the ruleset and dnsmasq of the app instances.
public final class AppNetwork: Sendable {
    public struct Options: Sendable {
        public var config = AppNetworkConfig.default
        /// dnsmasq's config, leases and log; the ruleset as last applied.
        public var directory = "/run/outpost/apps-network"
        /// The device's resolver list, as the network manager writes it.
        public var resolvConf = "/run/outpost/resolv.conf"
        public var nft = "/usr/sbin/nft"
        public var dnsmasq = "/usr/sbin/dnsmasq"
        public var leaseTime = "1h"
        /// The bound on each nft run and on dnsmasq's exit when it is restarted.
        public var commandTimeout = Duration.seconds(10)
        /// Extra dnsmasq lines, added at the end of its config.
        public var dnsmasqExtra: [String] = []
        /// False: the links `tap(app:interface:index:)` names exist already and are only bridged
        /// and filtered, never created or deleted. The host tests use this for veths whose other
        /// end is a namespace standing in for the guest, because they run no QEMU.
        public var createTaps = true

        public init() {}
    }

    public let options: Options
    private let reaper: Reaper

    private struct State {
        var started = false
        /// Taps by app, in attach order.
        var taps: [String: [AppTap]] = [:]
        var acls: [String: [TapACL]] = [:]
        var order: [String] = []
        var dnsmasqPID: pid_t?
        var dnsmasqConfig = ""
    }
    private let state = Mutex(State())
    /// Serialises the operations that change the kernel's state (attach, detach, start, stop).
    private let change = Mutex(())

    public init(options: Options = Options(), reaper: Reaper = .shared) {
        self.options = options
        self.reaper = reaper
    }

    public var bridge: String { options.config.bridge }

    /// Creates the bridge with its address, turns on forwarding, applies the base ruleset and starts dnsmasq.
    public func start() throws(AppsError) {
        try change.withLock { _ throws(AppsError) in
            guard !state.withLock({ $0.started }) else { return }
            let config = options.config
            guard let subnet = config.subnet, !subnet.isIPv6, let bytes = IPRange(config.gateway)?.address, config.leaseRange != nil else {
                throw .network(operation: "start", reason: "\(config.gateway)/\(config.prefixLength) is not an IPv4 subnet with room for leases")
            }
            for tool in [options.nft, options.dnsmasq] where access(tool, X_OK) != 0 {
                throw .network(operation: "start", reason: "\(tool) is missing (the slot's nftables and dnsmasq-base packages)")
            }
            if mkdir(options.directory, 0o755) != 0 && errno != EEXIST {
                throw .system(.current("mkdir", options.directory))
            }
            try link("create bridge \(bridge)", expecting: EEXIST) { OutpostShims_bridge_add(bridge) }
            let address = bytes.withUnsafeBytes { $0.load(as: UInt32.self) }
            let mask = UInt32(config.prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - config.prefixLength)).bigEndian
            try link("set \(config.gateway)/\(config.prefixLength) on \(bridge)") { OutpostShims_link_set_ipv4(bridge, address, mask) }
            try link("set \(bridge) up") { OutpostShims_link_set_up(bridge, 1) }
            // Routing between the bridge and the uplinks; strict reverse-path checks on the
            // bridge, so an app cannot send from an address that is not routed back to it.
            try sysctl("net/ipv4/ip_forward", "1")
            try sysctl("net/ipv4/conf/\(bridge)/rp_filter", "1")
            state.withLock { $0.started = true }
            try applyLocked()
        }
    }

    /// Creates a tap per manifest interface (not `directattach`) of `app` in the bridge and
    /// adds their ACL chains; returns them for QEMU's command line. Attaching again returns
    /// the existing taps (a restarted QEMU reopens them).
    @discardableResult
    public func attach(app: String, manifest: VMManifest) throws(AppsError) -> [AppTap] {
        try change.withLock { _ throws(AppsError) -> [AppTap] in
            guard state.withLock({ $0.started }) else { throw .network(operation: "attach \(app)", reason: "the app network is not started") }
            if let taps = state.withLock({ $0.taps[app] }) { return taps }
            var taps: [AppTap] = []
            var acls: [TapACL] = []
            for (index, interface) in manifest.interfaces.enumerated() where !interface.directAttach {
                let tap = Self.tap(app: app, interface: interface.name, index: index)
                if state.withLock({ $0.taps.values.contains { $0.contains { $0.name == tap.name } } }) {
                    throw .network(operation: "attach \(app)", reason: "tap \(tap.name) is already another app's")
                }
                taps.append(tap)
                acls.append(TapACL(tap: tap.name, acls: interface.acls))
            }
            do throws(AppsError) {
                for tap in taps {
                    if options.createTaps {
                        try link("create tap \(tap.name)") { OutpostShims_tap_set_persistent(tap.name, 1) }
                    }
                    try link("add \(tap.name) to \(bridge)", expecting: EBUSY) { OutpostShims_bridge_add_port(bridge, tap.name) }
                    try link("set \(tap.name) up") { OutpostShims_link_set_up(tap.name, 1) }
                }
                state.withLock {
                    $0.taps[app] = taps
                    $0.acls[app] = acls
                    $0.order.append(app)
                }
                try applyLocked()
            } catch {
                if options.createTaps { for tap in taps { _ = OutpostShims_tap_set_persistent(tap.name, 0) } }
                state.withLock {
                    $0.taps[app] = nil
                    $0.acls[app] = nil
                    $0.order.removeAll { $0 == app }
                }
                throw error
            }
            return taps
        }
    }

    /// Removes the app's taps and its rules (its counters go with them).
    public func detach(app: String) {
        change.withLock { _ in
            guard let taps = state.withLock({ state -> [AppTap]? in
                state.order.removeAll { $0 == app }
                state.acls[app] = nil
                return state.taps.removeValue(forKey: app)
            }) else { return }
            try? applyLocked()
            if options.createTaps { for tap in taps { _ = OutpostShims_tap_set_persistent(tap.name, 0) } }
        }
    }

    /// The taps an app has now.
    public func taps(app: String) -> [AppTap] { state.withLock { $0.taps[app] ?? [] } }

    /// The app's addresses, `interface=address`, from dnsmasq's lease file (`expiry mac ip
    /// name client-id` per line) matched by its taps' MACs; empty before a lease.
    public func addresses(app: String) -> [String] {
        let taps = taps(app: app)
        guard !taps.isEmpty, let bytes = try? FileIO.read(options.directory + "/leases", limit: 1 << 20) else { return [] }
        return Self.addresses(leases: String(decoding: bytes, as: UTF8.self), taps: taps)
    }

    static func addresses(leases: String, taps: [AppTap]) -> [String] {
        var byMAC: [String: String] = [:]
        for line in leases.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 3 else { continue }
            byMAC[fields[1].lowercased()] = String(fields[2])
        }
        return taps.compactMap { tap in byMAC[tap.mac.lowercased()].map { "\(tap.interface)=\($0)" } }
    }

    /// The app's ACL counters, rule by rule with the final drop-all last, read from the kernel.
    public func counters(app: String) throws(AppsError) -> [ACLCounter] {
        guard let acls = state.withLock({ $0.acls[app] }), !acls.isEmpty else { return [] }
        let output = try run(options.nft, ["-j", "list", "counters", "table", "bridge", ACLRuleset.filterTable], capture: true)
        return try ACLCounter.parse(json: output, taps: acls)
    }

    /// Asks dnsmasq (on the bridge address) for every `host` rule's name, so their sets hold the
    /// names' addresses even before an app looked them up: an app that uses an address it got
    /// elsewhere is still matched. Each query waits at most `timeout`; returns the names that
    /// got an answer. The agent calls it when apps start and then every few minutes.
    @discardableResult
    public func refreshHostNames(timeout: Duration = .seconds(2)) -> [String] {
        let names = state.withLock { state in
            Set(state.acls.values.flatMap { $0.flatMap(\.acls).flatMap(\.matches) }.compactMap { match -> String? in
                if case let .host(name) = match { return name }
                return nil
            })
        }
        guard let server = IPRange(options.config.gateway)?.address else { return [] }
        return names.sorted().filter { DNSQuery.resolves($0, server: server, timeout: timeout) }
    }

    /// Stops dnsmasq, deletes the tables, the taps and the bridge.
    public func stop() {
        change.withLock { _ in
            stopDNSMasq()
            let taps = state.withLock { state -> [AppTap] in
                let taps = state.order.flatMap { state.taps[$0] ?? [] }
                state = State()
                return taps
            }
            let path = options.directory + "/teardown.nft"
            if (try? FileIO.writeAtomically(Array(ACLRuleset.teardown().utf8), to: path)) != nil {
                _ = try? run(options.nft, ["-f", path])
            }
            if options.createTaps { for tap in taps { _ = OutpostShims_tap_set_persistent(tap.name, 0) } }
            _ = OutpostShims_link_set_up(bridge, 0)
            _ = OutpostShims_bridge_delete(bridge)
        }
    }

    /// The tap of an app's interface: `oa` + 8 hex digits of the app name's hash + the interface's
    /// index (Linux allows 15 characters), and a locally administered MAC from the same hash,
    /// so an app keeps its NIC's address, and with it its lease, across restarts.
    public static func tap(app: String, interface: String, index: Int) -> AppTap {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in app.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash & 0xffff_ffff, radix: 16)
        let name = "oa" + String(repeating: "0", count: 8 - hex.count) + hex + String(index % 100000)
        let bytes: [UInt8] = [0x02, 0x4f, UInt8(hash >> 24 & 0xff), UInt8(hash >> 16 & 0xff), UInt8(hash >> 8 & 0xff), UInt8(index & 0xff)]
        let mac = bytes.map { byte in
            let text = String(byte, radix: 16)
            return text.count == 1 ? "0" + text : text
        }.joined(separator: ":")
        return AppTap(interface: interface, name: name, mac: mac)
    }

    // MARK: - Internals

    /// Renders and applies the ruleset for the attached taps, and restarts dnsmasq when its
    /// config changed (new host names) or it is not running. Called with `change` held.
    private func applyLocked() throws(AppsError) {
        let config = options.config
        guard let subnet = config.subnet, let range = config.leaseRange else { return }
        let taps = state.withLock { state in state.order.flatMap { state.acls[$0] ?? [] } }
        let ruleset = ACLRuleset.render(bridge: bridge, gateway: config.gateway, subnet: subnet, taps: taps)
        let path = options.directory + "/ruleset.nft"
        do throws(SystemError) { try FileIO.writeAtomically(Array(ruleset.utf8), to: path) } catch { throw .system(error) }
        _ = try run(options.nft, ["-f", path])

        let dnsmasqConfig = ([
            "interface=\(bridge)", "bind-interfaces",
            "dhcp-range=\(range.first),\(range.last),\(config.netmask),\(options.leaseTime)",
            "dhcp-option=option:router,\(config.gateway)", "dhcp-option=option:dns-server,\(config.gateway)",
            "dhcp-authoritative", "dhcp-leasefile=\(options.directory)/leases",
            "resolv-file=\(options.resolvConf)", "no-hosts", "user=root", "group=root", "pid-file=",
            "log-facility=\(options.directory)/dnsmasq.log",
        ] + ACLRuleset.dnsmasqSets(taps: taps) + options.dnsmasqExtra).joined(separator: "\n") + "\n"
        let running = state.withLock { $0.dnsmasqPID != nil && $0.dnsmasqConfig == dnsmasqConfig }
        guard !running else { return }
        stopDNSMasq()
        let confPath = options.directory + "/dnsmasq.conf"
        do throws(SystemError) { try FileIO.writeAtomically(Array(dnsmasqConfig.utf8), to: confPath) } catch { throw .system(error) }
        let pid: pid_t
        do {
            pid = try reaper.spawn(options.dnsmasq, ["--keep-in-foreground", "--conf-file=\(confPath)"]) { [weak self] _ in
                self?.state.withLock { $0.dnsmasqPID = nil }
            }
        } catch {
            throw .network(operation: "start \(options.dnsmasq)", reason: error.description)
        }
        state.withLock {
            $0.dnsmasqPID = pid
            $0.dnsmasqConfig = dnsmasqConfig
        }
    }

    /// Ends dnsmasq (SIGTERM, then SIGKILL), waiting a bounded time for its exit.
    private func stopDNSMasq() {
        guard let pid = state.withLock({ $0.dnsmasqPID }) else { return }
        _ = kill(pid, SIGTERM)
        let deadline = Deadline(after: options.commandTimeout)
        var killed = false
        while state.withLock({ $0.dnsmasqPID == pid }) {
            reaper.reapAll()
            if deadline.hasPassed {
                guard !killed else { break }
                killed = true
                _ = kill(pid, SIGKILL)
            }
            MonotonicClock.sleep(for: .milliseconds(10))
        }
        state.withLock {
            if $0.dnsmasqPID == pid { $0.dnsmasqPID = nil }
            $0.dnsmasqConfig = ""
        }
    }

    /// Names each captured output file, so concurrent runs never share one.
    private static let outputSerial = Atomic<UInt64>(0)

    /// Runs a command to its end (bounded); with `capture`, returns its standard output.
    private func run(_ path: String, _ arguments: [String], capture: Bool = false) throws(AppsError) -> [UInt8] {
        let command = ([path] + arguments).joined(separator: " ")
        let outputPath = options.directory + "/output-\(Self.outputSerial.add(1, ordering: .relaxed).newValue)"
        var fd: Int32 = -1
        if capture {
            fd = open(outputPath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw .system(.current("open", outputPath)) }
        }
        defer {
            if fd >= 0 {
                _ = close(fd)
                _ = unlink(outputPath)
            }
        }
        let exit: ChildExit?
        do { exit = try reaper.run(path, arguments, standardOutput: fd, timeout: options.commandTimeout) } catch {
            throw .network(operation: command, reason: error.description)
        }
        guard let exit else { throw .network(operation: command, reason: "did not end within \(options.commandTimeout)") }
        guard exit.succeeded else { throw .network(operation: command, reason: "\(exit) (its message is on stderr)") }
        guard capture else { return [] }
        do throws(SystemError) { return try FileIO.read(outputPath, limit: 16 << 20) } catch { throw .system(error) }
    }

    /// A link ioctl through the shim; `expecting` is an errno that means "already so".
    private func link(_ what: String, expecting expected: Int32? = nil, _ body: () -> Int32) throws(AppsError) {
        guard body() != 0 else { return }
        let code = errno
        if let expected, code == expected { return }
        throw .network(operation: what, reason: String(cString: strerror(code)))
    }

    private func sysctl(_ key: String, _ value: String) throws(AppsError) {
        do throws(SystemError) { try FileIO.writeInPlace(value, to: "/proc/sys/" + key) } catch { throw .system(error) }
    }
}
