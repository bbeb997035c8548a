import FoundationEssentials
import OutpostHTTP
import OutpostPlatform
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Tunables for the manager; the defaults suit a device, tests shorten them.
public struct ManagerOptions: Sendable {
    /// Run in this named network namespace (host tests); nil on the device.
    public var namespace: String?
    public var resolvConfPath: String
    public var holdDown: Duration = .seconds(30)
    /// How long after start a cheaper port may take over at once (ports come up in any order).
    public var startupSettle: Duration = .seconds(3)
    public var probeInterval: Duration = .milliseconds(500)
    public var probeTimeout: Duration = .seconds(2)
    public var dhcp = DHCPClient.Timing()
    /// Anchors for https:// probe URLs (nil: the system store).
    public var probeTLS: TLSContext?

    public init(namespace: String?, resolvConfPath: String) {
        self.namespace = namespace
        self.resolvConfPath = resolvConfPath
    }
}

/// What status shows for one port beyond the selector's observation.
public struct PortReport: Sendable {
    public var addressing: PortAddressing?
    /// The last probe failure (or DHCP / kernel error) on this port.
    public var lastError: String?
    /// Wall-clock seconds of the last usability change.
    public var lastChange: Int?
    /// Why the port's last DHCP lease was lost (expiry, NAK), kept after later errors replace `lastError`.
    public var lastLeaseLoss: String?
}

/// A snapshot for status and tests: the active port, each port's observation, and history.
public struct NetworkStatus: Sendable {
    public var active: String?
    public var ports: [String: PortObservation] = [:]
    public var reports: [String: PortReport] = [:]
    public var routeChanges = 0
    /// Each change of the active port with its time, oldest first (bounded).
    public var changes: [(at: ContinuousClock.Instant, active: String?)] = []
    public var lastError: String?
    /// The last probe failure per port, for the console connectivity report.
    public var lastProbeError: [String: String] = [:]
    /// Ports renamed by MAC at start: new name → old name.
    public var renamed: [String: String] = [:]
}

/// Runs the network for one configuration: one thread waits on the netlink socket (and a
/// wake-up pipe), feeds the pure `PortSelector` and applies its decisions; one probe thread
/// per port tests connectivity through that port; one DHCP client thread per DHCP port.
/// Carrier loss is handled on the netlink event itself, so failover does not wait for a probe.
public final class NetworkManager: Sendable {
    public let config: NetworkConfig
    public let options: ManagerOptions
    private let ranked: [PortConfig]
    /// PAC files of ports that name one, fetched through the port and cached.
    private let pac = PACResolver()
    private let state: Mutex<State>
    /// What `start` creates and `stop` takes down; kept apart from `state` so that the
    /// threads' frequent state updates never wait for a thread start.
    private let runtime = Mutex(Runtime())
    /// Raised by `stop`: probe threads sleeping between rounds end at once.
    private let stopping = StopSignal()

    private struct Runtime {
        /// Wakes the event thread out of poll(2): a probe result, a lease, or stop.
        var wakeup: Wakeup?
        var threads: [NamedThread] = []
        var dhcpClients: [DHCPClient] = []
    }

    private struct State {
        var observations: [String: PortObservation] = [:]
        var generation: [String: Int] = [:]
        var running = false
        var eventLoopAlive = false
        var status = NetworkStatus()
        var selector: PortSelector
    }

    public init(config: NetworkConfig, options: ManagerOptions) {
        self.config = config
        self.options = options
        ranked = config.portsByPreference
        var s = State(selector: PortSelector(ports: ranked.map { ($0.name, $0.cost) }, holdDown: options.holdDown,
                                                    startupSettle: options.startupSettle))
        for port in ranked {
            s.observations[port.name] = PortObservation(probeOK: config.probe == nil)
            s.generation[port.name] = 0
            var report = PortReport()
            if case .staticAddress(let a, let p, let g, let d) = port.mode {
                report.addressing = PortAddressing(address: a, prefixLength: p, gateway: g, dns: d)
                s.observations[port.name]?.hasGateway = true
            }
            s.status.reports[port.name] = report
        }
        state = Mutex(s)
    }

    /// Puts the configuration into the kernel (renames by MAC, links up, static addresses and
    /// routes) and starts the threads. Errors on one port are recorded for that port, so the
    /// other ports still come up; a failure to watch links at all is thrown.
    public func start() throws {
        let wakeup: Wakeup
        do { wakeup = try Wakeup(label: "network manager") } catch { throw NetlinkError.system(error) }
        runtime.withLock { $0.wakeup = wakeup }
        let setup = try NetworkNamespace.run(options.namespace) { [self] in try prepareKernel() }
        state.withLock { $0.running = true; $0.eventLoopAlive = true; $0.status.renamed = setup.renamed }
        do {
            if config.probe != nil {
                for port in ranked {
                    try spawn("net-probe \(port.name)") { [self] in probeLoop(port) }
                }
            }
            for (rank, port) in ranked.enumerated() where port.mode == .dhcp {
                let client = try DHCPClient(device: port.name, mac: setup.macs[port.name] ?? [], timing: options.dhcp) { [self] event in
                    dhcpEvent(event, port: port.name, rank: rank)
                }
                runtime.withLock { $0.dhcpClients.append(client) }
            }
            // The clients exist before any thread that reaches them starts.
            for client in runtime.withLock({ $0.dhcpClients }) {
                try spawn("net-dhcp \(client.device)") { [self] in dhcpLoop(client) }
            }
            try spawn("net-events") { [self] in
                eventLoop(setup.watcher, setup.applier, wakeup)
                state.withLock { $0.eventLoopAlive = false }
            }
        } catch {
            stop()
            throw error
        }
    }

    /// Stops every thread and waits for them; addresses and routes stay as they are.
    public func stop() {
        state.withLock { $0.running = false }
        stopping.raise()
        let (clients, threads) = runtime.withLock { r in
            defer { r.threads = [] }
            return (r.dhcpClients, r.threads)
        }
        for client in clients { client.stop() }
        wake()
        for thread in threads { thread.join() }
    }

    /// Starts a joinable thread that `stop` joins.
    private func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) throws(NetlinkError) {
        let thread: NamedThread
        do { thread = try NamedThread.start(name: name, body) } catch { throw .system(error) }
        runtime.withLock { $0.threads.append(thread) }
    }

    public func snapshot() -> NetworkStatus {
        let dhcpClients = runtime.withLock { $0.dhcpClients }
        return state.withLock { s in
            var status = s.status
            status.ports = s.observations
            for client in dhcpClients where status.reports[client.device]?.addressing == nil {
                if let e = client.lastError { status.reports[client.device]?.lastError = e }
            }
            return status
        }
    }

    /// False once the event thread has ended (a fatal poll error) while it should be running.
    public var isHealthy: Bool { state.withLock { !$0.running || $0.eventLoopAlive } }

    // MARK: setup

    // @unchecked: LinkWatcher and RouteApplier own netlink sockets made inside the
    // namespace and are not thread-safe; Setup hands them from the namespace thread that
    // made them to the event thread, the only one that uses them afterwards.
    private struct Setup: @unchecked Sendable {
        let watcher: LinkWatcher
        let applier: RouteApplier
        let macs: [String: [UInt8]]
        let renamed: [String: String]
    }

    /// Runs inside the namespace: the sockets made here stay bound to it whatever thread uses them.
    private func prepareKernel() throws -> Setup {
        let applier = try RouteApplier(resolvConfPath: options.resolvConfPath)
        do { try RouteApplier.setSysctls() } catch { record(error: "\(error)") }
        var renamed: [String: String] = [:]
        for port in ranked {
            guard let mac = port.mac else { continue }
            do {
                if let old = try applier.renameByMAC(mac, to: port.name) { renamed[port.name] = old }
            } catch {
                record(error: "\(error)", port: port.name)
            }
        }
        var macs: [String: [UInt8]] = [:]
        for (rank, port) in ranked.enumerated() {
            do {
                try applier.prepare(port, rank: rank)
                macs[port.name] = try applier.hardwareAddress(port.name)
            } catch {
                record(error: "\(error)", port: port.name)
            }
        }
        let watcher = try LinkWatcher()
        return Setup(watcher: watcher, applier: applier, macs: macs, renamed: renamed)
    }

    // MARK: event thread

    private func wake() { runtime.withLock { $0.wakeup }?.signal() }

    private var isRunning: Bool { state.withLock { $0.running } }

    private func eventLoop(_ watcher: LinkWatcher, _ applier: RouteApplier, _ wakeup: Wakeup) {
        apply(links: watcher.links)
        var applied: (name: String?, addressing: PortAddressing?)? = nil
        // Links that bounced within one batch are applied down first and their final state on
        // the next turn, after the selector has seen the loss.
        var settle: [String: LinkState]?
        while isRunning {
            let (decision, addressing) = state.withLock { s in
                let d = s.selector.update(s.observations, now: .now)
                return (d, d.active.flatMap { s.status.reports[$0]?.addressing })
            }
            // A renewed lease with a new gateway re-points the route without counting as a move.
            if decision.changed || applied == nil || applied?.addressing != addressing {
                activate(decision.active, addressing: addressing, applier: applier, counted: decision.changed)
                applied = (decision.active, addressing)
            }
            if let final = settle {
                settle = nil
                apply(links: final)
                continue
            }
            var fds = [pollfd(fd: watcher.fileDescriptor, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeup.fileDescriptor, events: Int16(POLLIN), revents: 0)]
            do throws(SystemError) {
                _ = try pollDescriptors(&fds, timeout: decision.recheckAfter, object: "network events")
            } catch {
                record(error: "\(error)")
                return
            }
            if fds[1].revents != 0 { wakeup.consume() }
            if fds[0].revents != 0 {
                do {
                    let changed = try watcher.drain()
                    let current = watcher.links.filter { changed.contains($0.key) || watcher.bounced.contains($0.key) }
                    if watcher.bounced.isEmpty {
                        if !current.isEmpty { apply(links: current) }
                    } else {
                        var down = current
                        for name in watcher.bounced { down[name]?.carrier = false }
                        apply(links: down)
                        settle = current
                    }
                } catch {
                    record(error: "\(error)")
                }
            }
        }
    }

    /// Carrier loss also voids the port's last probe: it must pass again once carrier returns.
    private func apply(links: [String: LinkState]) {
        var carrierBack: [String] = []
        state.withLock { s in
            for (name, link) in links {
                guard var o = s.observations[name] else { continue }
                if o.carrier != link.carrier {
                    s.generation[name, default: 0] += 1
                    if config.probe != nil { o.probeOK = false }
                    if link.carrier { carrierBack.append(name) }
                    s.status.reports[name]?.lastChange = Int(time(nil))
                }
                o.carrier = link.carrier
                o.hasAddress = !link.ipv4.isEmpty
                s.observations[name] = o
            }
        }
        for client in runtime.withLock({ $0.dhcpClients }) where carrierBack.contains(client.device) { client.kick() }
    }

    private func activate(_ name: String?, addressing: PortAddressing?, applier: RouteApplier, counted: Bool) {
        do {
            try applier.activate(name, addressing: addressing)
        } catch {
            record(error: "\(error)")
        }
        guard counted else { return }
        state.withLock { s in
            s.status.active = name
            s.status.routeChanges += 1
            s.status.changes.append((ContinuousClock.now, name))
            if s.status.changes.count > 256 { s.status.changes.removeFirst(s.status.changes.count - 256) }
        }
    }

    private func record(error: String, port: String? = nil) {
        state.withLock { s in
            if let port { s.status.reports[port]?.lastError = error } else { s.status.lastError = error }
        }
    }

    // MARK: probe threads

    private func probeLoop(_ port: PortConfig) {
        guard let url = config.probe else { return }
        if let ns = options.namespace {
            do { try NetworkNamespace.enter(ns) } catch { record(error: "\(error)"); return }
        }
        let name = port.name
        while isRunning {
            let (ready, gen) = state.withLock { s -> (Bool, Int) in
                let o = s.observations[name] ?? PortObservation()
                return (o.carrier && o.hasAddress && o.hasGateway, s.generation[name] ?? 0)
            }
            if ready {
                var failure: String?
                do {
                    let proxy = try pac.proxy(for: port, url: url, tls: options.probeTLS, timeout: options.probeTimeout)
                    _ = try HTTPProbe.get(url, device: name, proxy: proxy, tls: options.probeTLS, timeout: options.probeTimeout)
                } catch {
                    failure = error.description
                }
                let changed = state.withLock { s -> Bool in
                    if let failure {
                        s.status.lastProbeError[name] = failure
                        s.status.reports[name]?.lastError = failure
                    }
                    let ok = failure == nil
                    guard s.generation[name] == gen, var o = s.observations[name], o.probeOK != ok else { return false }
                    o.probeOK = ok
                    s.observations[name] = o
                    s.status.reports[name]?.lastChange = Int(time(nil))
                    return true
                }
                if changed { wake() }
            }
            _ = stopping.sleep(for: options.probeInterval)
        }
    }

    // MARK: DHCP threads

    private func dhcpLoop(_ client: DHCPClient) {
        if let ns = options.namespace {
            do { try NetworkNamespace.enter(ns) } catch { record(error: "\(error)", port: client.device); return }
        }
        client.run()
    }

    /// Runs on the port's DHCP thread (inside the namespace): a lease goes into the kernel
    /// before the selector may count on it; a lost lease makes the port unusable at once.
    private func dhcpEvent(_ event: DHCPClient.Event, port name: String, rank: Int) {
        let applier: RouteApplier
        do { applier = try RouteApplier(resolvConfPath: options.resolvConfPath) } catch {
            record(error: "\(error)", port: name)
            return
        }
        switch event {
        case .bound(let lease):
            do {
                // The kernel's lifetime is a backstop for a dead agent; a little grace lets the
                // client's own expiry (which reports the loss) come first.
                try applier.install(name, rank: rank, lease.addressing, lifetime: lease.secondsLeft(at: .now).map { $0 &+ 2 })
            } catch {
                record(error: "\(error)", port: name)
                return
            }
            state.withLock { s in
                s.status.reports[name]?.addressing = lease.addressing
                s.status.reports[name]?.lastChange = Int(time(nil))
                s.observations[name]?.hasGateway = lease.router != nil
            }
        case .lost(let reason):
            state.withLock { s in
                s.generation[name, default: 0] += 1
                s.status.reports[name]?.addressing = nil
                s.status.reports[name]?.lastError = reason
                s.status.reports[name]?.lastLeaseLoss = reason
                s.status.reports[name]?.lastChange = Int(time(nil))
                s.observations[name]?.hasGateway = false
                s.observations[name]?.hasAddress = false
                if config.probe != nil { s.observations[name]?.probeOK = false }
            }
            do { try applier.clear(name, rank: rank) } catch { record(error: "\(error)", port: name) }
        }
        wake()
    }
}
