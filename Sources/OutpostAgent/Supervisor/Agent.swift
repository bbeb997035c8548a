// outpostd after early boot: works out why the device booted, opens the
// watchdog, starts the components and the feeder, and answers status.
// InitProcess owns the PID 1 loop; this type owns everything it drives.

#if canImport(Glibc)
import Glibc
#endif
import OutpostNetwork
import OutpostPlatform
import OutpostEarlyBoot
import Synchronization

public final class Agent: Sendable {
    /// Timing defaults. The watchdog timeout bounds how long a hang goes
    /// unnoticed by hardware; the PID 1 loop's deadline is well above its
    /// 1 s tick so a slow moment under load is not taken for a hang.
    public struct Timing: Sendable {
        public var watchdogTimeoutSeconds = 15
        public var initDeadlineMilliseconds: Int64 = 10_000
        public var storageIntervalMilliseconds: Int64 = 30_000
        public var storageDeadlineMilliseconds: Int64 = 90_000
        /// An orderly stop that takes longer than this is left to the watchdog.
        public var shutdownFeedMilliseconds: Int64 = 60_000
        public init() {}
    }

    public let slot: String
    public let version: String
    public let persistMount: String?
    public let history: BootHistory?
    public let lastBoot: LastBoot
    public let watchdog: Watchdog?
    public let watchdogError: String?
    /// The process's one reaper: PID 1 collects every child and orphan through it.
    public let reaper = Reaper.shared
    public let supervisor: Supervisor
    let timing: Timing
    let cpu = Mutex(CPUSampler())
    /// The update flow's component; set before `start()` when PERSIST is mounted.
    public var update: UpdateService? {
        get { services.withLock { $0.update } }
        set { services.withLock { $0.update = newValue } }
    }
    /// The network manager's service; set before `start()`.
    public var network: NetworkService? {
        get { services.withLock { $0.network } }
        set { services.withLock { $0.network = newValue } }
    }
    /// The controller client, or why there is none; set before `start()`.
    public var fleet: FleetSetup? {
        get { services.withLock { $0.fleet } }
        set { services.withLock { $0.fleet = newValue } }
    }
    /// The app instances, or why there are none; set before `start()`.
    public var apps: AppsSetup? {
        get { services.withLock { $0.apps } }
        set { services.withLock { $0.apps = newValue } }
    }
    /// The vault (nil: PERSIST is not mounted); set before `start()`.
    public var vault: VaultService? {
        get { vaultBox.withLock { $0 } }
        set { vaultBox.withLock { $0 = newValue } }
    }
    private let vaultBox = Mutex<VaultService?>(nil)
    /// The running client of a managed device.
    public var fleetClient: FleetAgent? {
        if case .managed(let fleet) = fleet { return fleet }
        return nil
    }
    /// When the feeder last fed the watchdog (monotonic ms; 0: never).
    let lastFeed = Atomic<Int64>(0)
    /// Set from the PID 1 thread, read by component and status threads.
    private let services = Mutex<(update: UpdateService?, network: NetworkService?, fleet: FleetSetup?, apps: AppsSetup?)>((nil, nil, nil, nil))
    private let shutdownStartedAt = Mutex<Int64?>(nil)

    /// Determines the last boot's reason (before anything could overwrite
    /// the evidence), opens the watchdog and records this boot's session.
    public init(slot: String, version: String, persistMount: String?, timing: Timing = Timing()) {
        self.slot = slot
        self.version = version
        self.persistMount = persistMount
        self.timing = timing
        supervisor = Supervisor(reaper: reaper)
        var watchdog: Watchdog?
        var watchdogError: String?
        do {
            watchdog = try Watchdog.open(timeoutSeconds: timing.watchdogTimeoutSeconds)
        } catch {
            watchdogError = "\(error)"
        }
        self.watchdog = watchdog
        self.watchdogError = watchdogError
        if let persistMount {
            let history = BootHistory(persistMount: persistMount)
            let evidence = history.gatherEvidence(watchdogCardReset: watchdog?.info.cardReset ?? false)
            lastBoot = LastBoot.determine(from: evidence, currentSlot: slot)
            for warning in history.beginSession(lastBoot: lastBoot, slot: slot, version: version) {
                Console.line("warning: \(warning)")
            }
            self.history = history
        } else {
            history = nil
            lastBoot = LastBoot(reason: .powerLoss, detail: "PERSIST not mounted; no records")
        }
        if let watchdog, watchdog.info.isSoftware {
            Console.line("warning: watchdog: only the software watchdog (softdog) is available; a kernel hang goes undetected")
        }
    }

    /// Registers the built-in components and starts them and the feeder.
    public func start() {
        supervisor.add(ComponentSpec(name: "init", critical: true,
                                     livenessDeadlineMilliseconds: timing.initDeadlineMilliseconds, body: .external))
        if let history {
            supervisor.add(StorageComponent.spec(history: history, supervisor: supervisor, timing: timing))
        }
        supervisor.add(ControlSocket.spec(agent: self))
        supervisor.add(PowerButton.spec())
        supervisor.add(ConsoleCommands.spec(agent: self))
        if let network {
            supervisor.add(NetworkComponent.spec(network, changed: { [self] in fleetClient?.client.stateChanged() }))
        }
        if let fleetClient {
            supervisor.add(FleetComponent.spec(fleetClient))
        }
        if let update {
            supervisor.add(UpdateComponent.spec(update, supervisor: supervisor))
        }
        if let apps {
            supervisor.add(AppsComponent.spec(apps))
        }
        supervisor.startAll()
        startFeeder()
        #if DEBUG || OUTPOST_FAULT_INJECTION
        FaultInjection.shared.startScript(agent: self)
        #endif
    }

    /// One round of the PID 1 loop: liveness of the loop itself, CPU sample,
    /// supervisor duties. Returns a shutdown to perform, if one is pending.
    public func tick() -> ShutdownRequest? {
        #if DEBUG || OUTPOST_FAULT_INJECTION
        try? FaultInjection.shared.checkpoint("init")
        #endif
        supervisor.beat("init")
        cpu.withLock { $0.sample(now: MonotonicClock.now().milliseconds, ticks: ProcessStats.cpuTicks()) }
        return supervisor.tick()
    }

    /// The feeder thread: once a second, feed if the supervisor says so. A
    /// decision not to feed is final and recorded first, so the next boot
    /// can name what hung; the reset follows within the timeout.
    func startFeeder() {
        guard let watchdog else { return }
        let history = history
        do {
            try NamedThread.detach(name: "watchdog") { [self] in
                var withheld = false
                var reportedError = false
                while true {
                    MonotonicClock.sleep(for: .milliseconds(1000))
                    var verdict = supervisor.feedVerdict()
                    if let started = shutdownStartedAt.withLock({ $0 }) {
                        verdict = MonotonicClock.now().milliseconds - started < timing.shutdownFeedMilliseconds
                            ? .feed : .withhold(component: "shutdown", detail: "orderly shutdown did not finish")
                    }
                    #if DEBUG || OUTPOST_FAULT_INJECTION
                    if FaultInjection.shared.watchdogStopped { continue }
                    #endif
                    if withheld { continue }
                    switch verdict {
                    case .feed:
                        do {
                            try watchdog.feed()
                            lastFeed.store(MonotonicClock.now().milliseconds, ordering: .relaxed)
                        } catch {
                            if !reportedError { Console.line("warning: watchdog: \(error)") }
                            reportedError = true
                        }
                    case .withhold(let component, let detail):
                        withheld = true
                        Console.line("watchdog: not feeding: \(component): \(detail); reset within "
                                     + "\(watchdog.info.timeoutSeconds) s")
                        do { try history?.recordWatchdogStop(component: component, detail: detail) } catch {
                            Console.line("warning: cannot record the watchdog reason: \(error)")
                        }
                    }
                }
            }
        } catch {
            Console.line("warning: watchdog feeder not started (\(error)); the watchdog will reset the machine")
        }
    }

    /// An orderly stop: record why, save the final status, stop components.
    /// InitProcess then unmounts PERSIST and calls `disarmWatchdog`.
    public func beginShutdown(_ request: ShutdownRequest) {
        shutdownStartedAt.withLock { $0 = MonotonicClock.now().milliseconds }
        var line = "stopping: reason=\(request.reason.rawValue)"
        if let component = request.component { line += " component=\(component)" }
        if let detail = request.detail { line += " (\(detail))" }
        Console.line(line)
        if let history {
            do {
                try history.recordShutdown(request)
                try history.writeAtomically(history.lastStatusPath, StatusReport(agent: self).json())
            } catch {
                Console.line("warning: cannot record the shutdown: \(error)")
            }
        }
        supervisor.stopAll(timeoutMilliseconds: 3000)
    }

    public func disarmWatchdog() {
        do { try watchdog?.disarm() } catch { Console.line("warning: watchdog magic close failed: \(error)") }
    }
}

/// CPU use over the last minute from periodic /proc/self/stat samples.
struct CPUSampler {
    var samples: [(at: Int64, ticks: Int64)] = []

    mutating func sample(now: Int64, ticks: Int64?) {
        guard let ticks else { return }
        if let last = samples.last, now - last.at < 10_000 { return }
        samples.append((now, ticks))
        samples.removeAll { now - $0.at > 70_000 }
    }

    /// Percent of one CPU over the window covered by the samples (≥ 10 s).
    func percent(now: Int64, ticks: Int64?) -> Double? {
        guard let ticks, let first = samples.first, now - first.at >= 10_000 else { return nil }
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        return Double(ticks - first.ticks) / hz / (Double(now - first.at) / 1000) * 100
    }
}
