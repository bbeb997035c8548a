import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Tunables for the manager; the defaults suit a device, tests shorten the hold-down.
public struct ManagerOptions: Sendable {
    /// Run in this named network namespace (host tests); nil on the device.
    public var namespace: String?
    public var resolvConfPath: String
    public var probe: ProbeTarget
    public var holdDown: Duration = .seconds(30)
    public var probeInterval: Duration = .milliseconds(100)
    public var probeTimeout: Duration = .milliseconds(300)

    public init(namespace: String?, resolvConfPath: String, probe: ProbeTarget) {
        self.namespace = namespace
        self.resolvConfPath = resolvConfPath
        self.probe = probe
    }
}

/// A snapshot for status and tests: the active port, each port's observation, and history.
public struct NetworkStatus: Sendable {
    public var active: String?
    public var ports: [String: PortObservation]
    public var routeChanges: Int
    /// Each change of the active port with its time, oldest first.
    public var changes: [(at: ContinuousClock.Instant, active: String?)]
    public var lastError: String?
    /// The last probe failure per port, for the console connectivity report.
    public var lastProbeError: [String: String] = [:]
}

/// Runs the network: one thread waits on the netlink socket (and a wake-up pipe), feeds the
/// pure `PortSelector` and applies its decisions; one probe thread per port tests
/// connectivity through that port. Carrier loss is handled on the netlink event itself, so
/// failover does not wait for a probe to time out.
public final class NetworkManager: @unchecked Sendable {
    public let config: NetworkConfig
    public let options: ManagerOptions
    private let applier: RouteApplier
    private let lock = NSLock()
    // Guarded by `lock`.
    private var observations: [String: PortObservation] = [:]
    private var generation: [String: Int] = [:]
    private var running = false
    private var status: NetworkStatus
    // Owned by the event thread.
    private var selector: PortSelector
    private var wakePipe: [Int32] = [-1, -1]
    private var exited: [DispatchSemaphore] = []

    public init(config: NetworkConfig, options: ManagerOptions) {
        self.config = config
        self.options = options
        self.applier = RouteApplier(namespace: options.namespace, resolvConfPath: options.resolvConfPath)
        let ranked = config.portsByPreference
        self.selector = PortSelector(ports: ranked.map { ($0.name, $0.cost) }, holdDown: options.holdDown)
        self.status = NetworkStatus(active: nil, ports: [:], routeChanges: 0, changes: [])
        for port in ranked {
            var o = PortObservation()
            if case .staticAddress = port.mode { o.hasGateway = true }
            observations[port.name] = o
            generation[port.name] = 0
        }
    }

    deinit {
        for fd in wakePipe where fd >= 0 { close(fd) }
    }

    /// Configures the ports and starts the threads; returns once the netlink socket is open,
    /// so a failure to watch links is reported here rather than lost in a thread.
    public func start() throws {
        for (rank, port) in config.portsByPreference.enumerated() { try applier.configure(port, rank: rank) }
        guard pipe(&wakePipe) == 0 else { throw NetlinkError.system(call: "pipe", target: "wake", errno: errno) }
        for fd in wakePipe {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        lock.withLock { running = true }
        let ready = DispatchSemaphore(value: 0)
        let startError = ResultBox<Void>()
        spawn { [self] in
            let watcher: LinkWatcher
            do {
                if let ns = options.namespace { try NetworkNamespace.enter(ns) }
                watcher = try LinkWatcher()
                startError.result = .success(())
            } catch {
                startError.result = .failure(error)
                ready.signal()
                return
            }
            ready.signal()
            eventLoop(watcher, initial: watcher.links)
        }
        ready.wait()
        if case .failure(let error) = startError.result { stop(); throw error }
        for port in config.portsByPreference {
            spawn { [self] in probeLoop(port.name) }
        }
    }

    /// Stops every thread and waits for them; the routes stay as they are.
    public func stop() {
        lock.withLock { running = false }
        wake()
        for done in exited { done.wait() }
        exited = []
    }

    public func snapshot() -> NetworkStatus {
        lock.withLock { var s = status; s.ports = observations; return s }
    }

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        exited.append(done)
        Thread { body(); done.signal() }.start()
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = retryingEINTR { write(wakePipe[1], &byte, 1) }
    }

    private var isRunning: Bool { lock.withLock { running } }

    private func eventLoop(_ watcher: LinkWatcher, initial: [String: LinkState]) {
        apply(links: initial)
        var timeout: Int32 = 0
        while isRunning {
            let decision = lock.withLock { selector.update(observations, now: .now) }
            if decision.changed { activate(decision.active) }
            timeout = decision.recheckAfter.map { Int32(max(1, $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000 + 1)) } ?? -1
            var fds = [pollfd(fd: watcher.fileDescriptor, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakePipe[0], events: Int16(POLLIN), revents: 0)]
            let r = poll(&fds, 2, timeout)
            if r < 0 && errno != EINTR { record(error: "poll: \(String(cString: strerror(errno)))"); return }
            if fds[1].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 64)
                while read(wakePipe[0], &sink, sink.count) > 0 {}
            }
            if fds[0].revents != 0 {
                do {
                    let changed = try watcher.drain()
                    if !changed.isEmpty { apply(links: watcher.links.filter { changed.contains($0.key) }) }
                } catch {
                    record(error: "\(error)")
                }
            }
        }
    }

    /// Carrier loss also voids the port's last probe: it must pass again once carrier returns.
    private func apply(links: [String: LinkState]) {
        lock.withLock {
            for (name, link) in links {
                guard var o = observations[name] else { continue }
                if o.carrier != link.carrier {
                    generation[name, default: 0] += 1
                    o.probeOK = false
                }
                o.carrier = link.carrier
                o.hasAddress = !link.ipv4.isEmpty
                observations[name] = o
            }
        }
    }

    private func activate(_ name: String?) {
        let port = config.ports.first { $0.name == name }
        do {
            try applier.activate(port)
        } catch {
            record(error: "\(error)")
        }
        lock.withLock {
            status.active = name
            status.routeChanges += 1
            status.changes.append((ContinuousClock.now, name))
        }
    }

    private func record(error: String) {
        lock.withLock { status.lastError = error }
    }

    private func probeLoop(_ name: String) {
        if let ns = options.namespace {
            do { try NetworkNamespace.enter(ns) } catch { record(error: "\(error)"); return }
        }
        while isRunning {
            let (ready, gen) = lock.withLock { () -> (Bool, Int) in
                let o = observations[name] ?? PortObservation()
                return (o.carrier && o.hasAddress, generation[name] ?? 0)
            }
            if ready {
                var ok = true
                var failure: String?
                do { _ = try HTTPProbe.get(options.probe, device: name, timeout: options.probeTimeout) } catch {
                    ok = false
                    failure = error.description
                }
                let changed = lock.withLock { () -> Bool in
                    if let failure { status.lastProbeError[name] = failure }
                    guard generation[name] == gen, var o = observations[name], o.probeOK != ok else { return false }
                    o.probeOK = ok
                    observations[name] = o
                    return true
                }
                if changed { wake() }
            }
            Thread.sleep(forTimeInterval: Double(options.probeInterval.components.attoseconds) / 1e18 + Double(options.probeInterval.components.seconds))
        }
    }
}
