import FoundationEssentials
import OutpostHTTP
#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import Synchronization

/// The outcome of a pushed configuration.
public enum PushResult: Equatable, Sendable, CustomStringConvertible {
    /// A port became usable within the test time; the config is now first in the last-known-good list.
    case applied(activePort: String)
    /// The config was invalid; nothing changed. The message names the field.
    case rejected(String)
    /// The config was valid but yielded no usable port in time; the previous one is back.
    case rolledBack(String)

    public var description: String {
        switch self {
        case .applied(let port): return "applied (active port \(port))"
        case .rejected(let why): return "rejected: \(why)"
        case .rolledBack(let why): return "rolled back: \(why)"
        }
    }
}

/// The network as the agent's supervisor sees it: one object to start, stop, push
/// configurations to, and ask for status. It chooses the configuration at start (newest
/// last-known-good, else the bootstrap file, else every port on DHCP), tests pushed
/// configurations on arrival and rolls back a bad one, so the device never locks itself out.
/// FoundationEssentials only: it links into the static `outpostd`.
public final class NetworkService: Sendable {
    /// Tunables; the defaults suit a device, tests shorten them.
    public struct Options: Sendable {
        public var holdDown: Duration = .seconds(30)
        /// How long after (re)start a cheaper port may take over without hold-down.
        public var startupSettle: Duration = .seconds(3)
        public var probeInterval: Duration = .milliseconds(500)
        public var probeTimeout: Duration = .seconds(2)
        public var dhcp = DHCPClient.Timing()
        /// How many configurations the last-known-good list keeps.
        public var lastKnownGoodCapacity = 4
        /// How often a configuration waiting to be remembered looks for a usable port
        /// (at boot, and after a rollback); otherwise the monitor sleeps until woken.
        public var rememberPoll: Duration = .seconds(1)
        /// Anchors for https:// probe URLs (the controller's CA from CONFIG); nil: the system store.
        public var probeTLS: TLSContext?
        public init() {}
    }

    public let configPath: String
    public let stateDirectory: String
    public let resolvConfPath: String
    public let namespace: String?
    public let options: Options
    private let store: LastKnownGoodStore
    private let state = Mutex(ServiceState())
    /// Serialises start, stop and push; held for a push's whole test time.
    private let control = Mutex(())

    private struct ServiceState {
        var manager: NetworkManager?
        var origin = "none"
        var configError: String?
        var lastPush: String?
        var rememberWhenUsable = false
        var running = false
        var monitorAlive = false
    }

    /// The thread that remembers a working configuration; started by `start`, joined by `stop`.
    private let monitor = Mutex<NamedThread?>(nil)
    /// Wakes the monitor when there is something to remember again, or to stop.
    private let monitorWake = try? Wakeup(label: "network service monitor")

    public init(configPath: String, stateDirectory: String, resolvConfPath: String, namespace: String? = nil,
                options: Options = Options()) {
        self.configPath = configPath
        self.stateDirectory = stateDirectory
        self.resolvConfPath = resolvConfPath
        self.namespace = namespace
        self.options = options
        store = LastKnownGoodStore(directory: stateDirectory, capacity: options.lastKnownGoodCapacity)
    }

    /// Starts with the newest last-known-good configuration, else the bootstrap file, else the
    /// built-in all-DHCP default; a malformed bootstrap is recorded in status, never fatal.
    /// Throws only when the network cannot be managed at all (no netlink, no threads).
    public func start() throws {
        try control.withLock { _ in
            guard !state.withLock({ $0.running }) else { return }
            var errors: [String] = []
            var lkg: [NetworkConfig] = []
            do { lkg = try store.load() } catch { errors.append("\(error)") }
            var chosen: NetworkConfig
            var origin: String
            if let newest = lkg.first {
                chosen = newest
                origin = "last-known-good"
            } else {
                chosen = NetworkConfig.allDHCP
                origin = "built-in default (all ports DHCP)"
            }
            do {
                if let bytes = try FileIO.readIfPresent(configPath) {
                    do {
                        let bootstrap = try NetworkConfig(json: Data(bytes))
                        if lkg.isEmpty { chosen = bootstrap; origin = "bootstrap \(configPath)" }
                    } catch {
                        errors.append("\(configPath): \(error)")
                    }
                } else if lkg.isEmpty {
                    errors.append("\(configPath): missing")
                }
            } catch {
                errors.append("\(error)")
            }
            let manager = try launch(chosen)
            state.withLock { s in
                s.manager = manager
                s.origin = origin
                s.configError = errors.isEmpty ? nil : errors.joined(separator: "; ")
                s.rememberWhenUsable = true
                s.running = true
                s.monitorAlive = true
            }
            let thread = try NamedThread.start(name: "net-service") { [self] in
                monitorLoop()
                state.withLock { $0.monitorAlive = false }
            }
            monitor.withLock { $0 = thread }
        }
    }

    /// Stops every network thread; addresses and routes stay, so the device keeps its connection.
    public func stop() {
        control.withLock { _ in
            let manager = state.withLock { s -> NetworkManager? in
                s.running = false
                defer { s.manager = nil }
                return s.manager
            }
            manager?.stop()
            monitorWake?.signal()
            monitor.withLock { thread in
                defer { thread = nil }
                return thread
            }?.join()
        }
    }

    /// Says whether the device can do its job over `activePort` (nil: yes; else why not). A managed
    /// device passes a call to its controller: a configuration that gives a port carrier, address
    /// and route but cuts the device off from its controller must not be kept.
    public typealias Acceptance = @Sendable (_ activePort: String) -> String?

    /// Validates, applies and tests a configuration (blocking up to its test time). On success it
    /// becomes the newest last-known-good; an invalid one changes nothing; one that yields no
    /// usable port in time, or whose port `acceptance` refuses throughout, is replaced by the
    /// previous configuration again. While on test the candidate is the one in force (status
    /// and `controllerPorts` show it), so `acceptance` goes out through it.
    public func push(_ json: Data, acceptance: Acceptance? = nil) -> PushResult {
        control.withLock { _ -> PushResult in
            let candidate: NetworkConfig
            do { candidate = try NetworkConfig(json: json) } catch {
                state.withLock { $0.configError = "pushed: \(error)"; $0.lastPush = "rejected" }
                return .rejected("\(error)")
            }
            // The configuration already in force and working: remember it, disturb nothing.
            if let current = state.withLock({ $0.manager }), current.config.sameSettings(as: candidate),
               let active = current.snapshot().active {
                var rememberError: String?
                do { try store.remember(candidate) } catch { rememberError = "\(error)" }
                state.withLock { $0.configError = rememberError; $0.lastPush = "unchanged"; $0.rememberWhenUsable = false }
                return .applied(activePort: active)
            }
            let previous = state.withLock { s -> NetworkManager? in
                defer { s.manager = nil }
                return s.manager
            }
            previous?.stop()
            let fallback = previous?.config ?? NetworkConfig.allDHCP
            let (previousOrigin, previousRemember) = state.withLock { ($0.origin, $0.rememberWhenUsable) }
            var outcome: PushResult
            var manager: NetworkManager?
            do {
                let started = try launch(candidate)
                manager = started
                // On test: in force, but not remembered until it has passed.
                state.withLock { s in
                    s.manager = started
                    s.origin = "pushed (on test)"
                    s.rememberWhenUsable = false
                }
                outcome = Self.test(started, within: candidate.testTime, acceptance: acceptance)
            } catch {
                outcome = .rolledBack("cannot apply: \(error); previous configuration restored")
            }
            if case .applied = outcome {
                var rememberError: String?
                do { try store.remember(candidate) } catch { rememberError = "\(error)" }
                state.withLock { s in
                    s.manager = manager
                    s.origin = "pushed"
                    s.configError = rememberError
                    s.lastPush = outcome.description
                    s.rememberWhenUsable = false
                }
                return outcome
            }
            state.withLock { s in
                s.manager = nil
                s.origin = previousOrigin
                s.rememberWhenUsable = previousRemember
            }
            monitorWake?.signal()
            manager?.stop()
            var restoreError: String?
            do {
                let restored = try launch(fallback)
                state.withLock { $0.manager = restored }
            } catch {
                restoreError = "\(error)"
            }
            state.withLock { s in
                s.configError = "pushed: \(outcome)" + (restoreError.map { "; restore failed: \($0)" } ?? "")
                s.lastPush = outcome.description
            }
            return outcome
        }
    }

    /// `push` for text, as it arrives from a controller or a local file.
    public func push(_ json: String, acceptance: Acceptance? = nil) -> PushResult {
        push(Data(json.utf8), acceptance: acceptance)
    }

    /// A liveness hook for the supervisor: the manager's event thread and the service monitor run.
    public var isHealthy: Bool {
        state.withLock { s in s.running && s.monitorAlive && (s.manager?.isHealthy ?? false) }
    }

    /// The port carrying the default route now, if any.
    public var activePort: String? { state.withLock { $0.manager }?.snapshot().active }

    /// The usable ports that share the lowest usable cost, best first: equal-cost ports share the
    /// load, so the controller client rotates its connections among these (binding each socket
    /// to the port with SO_BINDTODEVICE). Empty when nothing is usable.
    public var controllerPorts: [String] {
        guard let manager = state.withLock({ $0.manager }) else { return [] }
        let status = manager.snapshot()
        let usable = manager.config.portsByPreference.filter { status.ports[$0.name]?.usable == true }
        guard let best = usable.first?.cost else { return [] }
        return usable.filter { $0.cost == best }.map(\.name)
    }

    // MARK: internals

    private func launch(_ config: NetworkConfig) throws -> NetworkManager {
        var managerOptions = ManagerOptions(namespace: namespace, resolvConfPath: resolvConfPath)
        managerOptions.holdDown = options.holdDown
        managerOptions.startupSettle = options.startupSettle
        managerOptions.probeInterval = options.probeInterval
        managerOptions.probeTimeout = options.probeTimeout
        managerOptions.dhcp = options.dhcp
        managerOptions.probeTLS = options.probeTLS
        let manager = NetworkManager(config: config, options: managerOptions)
        try manager.start()
        return manager
    }

    /// A pushed configuration's test: within `limit`, a port must become active and, when there is
    /// an acceptance check, pass it (asked at most every second while the port is active).
    static func test(_ manager: NetworkManager, within limit: Duration, acceptance: Acceptance?) -> PushResult {
        let deadline = Deadline(after: limit)
        var refusal: String?
        while true {
            if let port = manager.snapshot().active {
                guard let acceptance else { return .applied(activePort: port) }
                let asked = MonotonicClock.now()
                guard let why = acceptance(port) else { return .applied(activePort: port) }
                refusal = "\(port): \(why)"
                let pause = Duration.seconds(1) - asked.elapsed
                if deadline.hasPassed { break }
                if pause > .zero { MonotonicClock.sleep(for: min(pause, deadline.remaining)) }
            } else {
                if deadline.hasPassed { break }
                MonotonicClock.sleep(for: .milliseconds(20))
            }
        }
        if let refusal {
            return .rolledBack("not accepted within \(limit) (\(refusal)); previous configuration restored")
        }
        let snapshot = manager.snapshot()
        let why = manager.config.ports.map { p in "\(p.name): \(snapshot.reports[p.name]?.lastError ?? "not usable")" }.joined(separator: ", ")
        return .rolledBack("no port became usable within \(limit) (\(why)); previous configuration restored")
    }

    /// Remembers the configuration in force once it has worked (a bootstrap or default that
    /// never made it into the list), so the next boot starts from something proven.
    private func monitorLoop() {
        while true {
            let (running, remember, manager) = state.withLock { ($0.running, $0.rememberWhenUsable, $0.manager) }
            guard running else { return }
            if remember, let manager, manager.snapshot().active != nil {
                let result: String?
                do { try store.remember(manager.config); result = nil } catch { result = "\(error)" }
                state.withLock { s in
                    s.rememberWhenUsable = false
                    if let result { s.configError = result }
                }
                continue
            }
            // Waiting for a usable port: look again shortly. Nothing to remember: sleep until a
            // rollback or stop wakes it (a minute at most, should a wake-up ever be missed).
            let pause: Duration = remember ? options.rememberPoll : .seconds(60)
            if let monitorWake { monitorWake.wait(timeout: pause) } else { MonotonicClock.sleep(for: options.rememberPoll) }
        }
    }

    func snapshot() -> (status: NetworkStatus?, config: NetworkConfig?, origin: String, configError: String?, lastPush: String?) {
        let (manager, origin, error, push) = state.withLock { ($0.manager, $0.origin, $0.configError, $0.lastPush) }
        return (manager?.snapshot(), manager?.config, origin, error, push)
    }
}
