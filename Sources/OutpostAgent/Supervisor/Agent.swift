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
    /// 3 s tick so a slow moment under load is not taken for a hang. An idle
    /// device wakes seldom: each wake-up costs CPU, and under emulation a lot.
    public struct Timing: Sendable {
        public var watchdogTimeoutSeconds = 15
        /// The PID 1 loop's longest wait; the supervisor wakes it sooner when it has news.
        public var tickMilliseconds: Int64 = 3_000
        public var initDeadlineMilliseconds: Int64 = 12_000
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
        supervisor = Supervisor(reaper: reaper, wake: { PID1.wake() })
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
        let now = MonotonicClock.now().milliseconds
        if cpu.withLock({ $0.isDue(now: now) }) {
            let ticks = ProcessStats.cpuTicks(), threads = ProcessStats.threadTicks()
            cpu.withLock { $0.sample(now: now, ticks: ticks, threads: threads) }
        }
        return supervisor.tick()
    }

    /// How often the feeder feeds: a quarter of the watchdog's timeout (between 1 and 5 s),
    /// so three feeds can be late before the timer runs out.
    static func feedInterval(timeoutSeconds: Int) -> Duration {
        .milliseconds(min(5_000, max(1_000, timeoutSeconds * 1000 / 4)))
    }

    /// The feeder thread: every `feedInterval`, feed if the supervisor says so. A
    /// decision not to feed is final and recorded first, so the next boot
    /// can name what hung; the reset follows within the timeout.
    func startFeeder() {
        guard let watchdog else { return }
        let history = history
        let interval = Self.feedInterval(timeoutSeconds: watchdog.info.timeoutSeconds)
        do {
            try NamedThread.detach(name: "watchdog") { [self] in
                var withheld = false
                var reportedError = false
                while true {
                    MonotonicClock.sleep(for: interval)
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

/// CPU use over the last minute from /proc samples taken every 10 s: the whole
/// process (/proc/self/stat) and each thread name (/proc/self/task/*/stat),
/// so that `status` can say which of outpostd's threads spends it.
struct CPUSampler {
    struct Sample {
        var at: Int64
        var ticks: Int64
        var threads: [String: Int64]
    }
    static let every: Int64 = 10_000
    static let window: Int64 = 70_000
    var samples: [Sample] = []

    /// Whether a sample taken `now` would be kept: /proc is read only then.
    func isDue(now: Int64) -> Bool {
        guard let last = samples.last else { return true }
        return now - last.at >= Self.every
    }

    mutating func sample(now: Int64, ticks: Int64?, threads: [String: Int64]) {
        guard let ticks, isDue(now: now) else { return }
        samples.append(Sample(at: now, ticks: ticks, threads: threads))
        samples.removeAll { now - $0.at > Self.window }
    }

    /// Percent of one CPU over the window covered by the samples (≥ 10 s).
    func percent(now: Int64, ticks: Int64?) -> Double? {
        guard let ticks, let first = samples.first, now - first.at >= Self.every else { return nil }
        return Self.percent(ticks - first.ticks, over: now - first.at)
    }

    /// Each thread name's percent of one CPU over the same window, busiest first;
    /// threads that spent nothing in it are left out.
    func percentByThread(now: Int64, threads: [String: Int64]) -> [(name: String, percent: Double)] {
        guard let first = samples.first, now - first.at >= Self.every else { return [] }
        return threads.compactMap { name, ticks -> (name: String, percent: Double)? in
            let spent = ticks - (first.threads[name] ?? 0)
            return spent > 0 ? (name, Self.percent(spent, over: now - first.at)) : nil
        }.sorted { $0.percent != $1.percent ? $0.percent > $1.percent : $0.name < $1.name }
    }

    static func percent(_ ticks: Int64, over milliseconds: Int64) -> Double {
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        return Double(ticks) / hz / (Double(milliseconds) / 1000) * 100
    }
}
