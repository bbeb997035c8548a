// Keeps outpostd's components alive and decides whether the watchdog may be fed.
//
//   start ─▶ running ──beat()──▶ running          (liveness deadline holds)
//               │  └─no beat past deadline─▶ hung  (critical: feeding stops → reset)
//               └─crash/exit─▶ RestartTracker ─▶ backoff ─delay─▶ start
//                                            └─▶ crash loop ─▶ reboot (crash-loop) or failed
//
// All state is behind one lock; component threads only beat and report their
// end. The PID 1 loop calls `tick` once a second to start what is due and to
// pick up a pending shutdown. A hung thread cannot be killed safely inside a
// process, so a hung in-process component is reported, never "restarted".

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot
import Synchronization

/// One component as `outpostd status` shows it.
public struct ComponentStatus: Sendable, Equatable {
    public var name: String
    public var kind: String
    public var critical: Bool
    public var state: ComponentState
    public var restarts: Int
    public var pid: Int32?
    public var lastBeatAgeMilliseconds: Int64?
    public var lastError: String?
}

/// Whether the feeder may keep the watchdog from firing.
public enum FeedVerdict: Sendable, Equatable {
    case feed
    case withhold(component: String, detail: String)
}

public final class Supervisor: Sendable {
    struct Entry {
        var spec: ComponentSpec
        var state = ComponentState.starting
        var tracker: RestartTracker
        var generation = 0
        var startedAt: Int64 = 0
        var lastBeat: Int64 = 0
        var nextStartAt: Int64?
        var pid: pid_t?
        var lastError: String?
    }

    struct State {
        var order: [String] = []
        var entries: [String: Entry] = [:]
        var shutdown: ShutdownRequest?
        var stopping = false
        var persistUnwritableSince: Int64?
    }

    let stopSignal = StopSignal()
    let reaper: Reaper
    private let state = Mutex(State())
    private let log: @Sendable (String) -> Void
    private let clock: @Sendable () -> Int64
    /// How long PERSIST may refuse writes before the watchdog feed stops:
    /// long enough for the storage component's backoff retries. Read by the
    /// feeder thread, set by tests and the agent: hence atomic.
    public var persistGraceMilliseconds: Int64 {
        get { persistGrace.load(ordering: .relaxed) }
        set { persistGrace.store(newValue, ordering: .relaxed) }
    }
    private let persistGrace = Atomic<Int64>(30_000)

    /// Tells the PID 1 loop there is news (a restart scheduled, a shutdown asked for).
    private let wake: @Sendable () -> Void

    init(reaper: Reaper, log: @escaping @Sendable (String) -> Void = { Console.line($0) },
                clock: @escaping @Sendable () -> Int64 = { MonotonicClock.now().milliseconds },
                wake: @escaping @Sendable () -> Void = {}) {
        self.reaper = reaper
        self.log = log
        self.clock = clock
        self.wake = wake
    }

    public func add(_ spec: ComponentSpec) {
        state.withLock { state in
            if state.entries[spec.name] == nil { state.order.append(spec.name) }
            state.entries[spec.name] = Entry(spec: spec, tracker: RestartTracker(policy: spec.policy))
        }
    }

    /// Adds `spec` and starts it at once (helpers added while the system runs).
    public func launch(_ spec: ComponentSpec) {
        add(spec)
        start(spec.name)
    }

    public func startAll() {
        for name in state.withLock({ $0.order }) { start(name) }
    }

    func start(_ name: String) {
        let now = clock()
        guard let (spec, generation) = state.withLock({ (state: inout State) -> (ComponentSpec, Int)? in
            guard !state.stopping, var entry = state.entries[name] else { return nil }
            entry.generation += 1
            entry.state = .running
            entry.startedAt = now
            entry.lastBeat = now
            entry.nextStartAt = nil
            entry.pid = nil
            state.entries[name] = entry
            return (entry.spec, entry.generation)
        }) else { return }

        switch spec.body {
        case .external:
            return
        case .task(let body):
            let context = ComponentContext(name: name, generation: generation, supervisor: self)
            do {
                try NamedThread.detach(name: name) { [self] in
                    do {
                        try body(context)
                        if !stopSignal.isRaised { ended(name, generation: generation, error: "\(ComponentReturned())") }
                    } catch {
                        ended(name, generation: generation, error: "\(error)")
                    }
                }
            } catch {
                ended(name, generation: generation, error: "\(error)")
            }
        case .process(let path, let arguments):
            do {
                let pid = try reaper.spawn(path, arguments) { [self] exit in
                    ended(name, generation: generation, error: "\(path) \(exit)")
                }
                state.withLock { state in
                    if state.entries[name]?.generation == generation { state.entries[name]?.pid = pid }
                }
            } catch {
                ended(name, generation: generation, error: "\(error)")
            }
        }
    }

    /// A component's body ended, or its process exited: apply its policy.
    func ended(_ name: String, generation: Int, error: String) {
        let now = clock()
        let message: String? = state.withLock { state in
            guard !state.stopping, var entry = state.entries[name], entry.generation == generation else { return nil }
            entry.pid = nil
            entry.lastError = error
            let decision = entry.tracker.recordFailure(startedAt: entry.startedAt, now: now)
            var message: String
            switch decision {
            case .restart(let delay, let attempt):
                entry.state = .backoff
                entry.nextStartAt = now + delay
                message = "component \(name) failed: \(error); restart \(attempt) in \(delay) ms"
            case .escalate(let failures, let window):
                entry.state = .failed
                message = "component \(name) failed: \(error); crash loop (\(failures) failures in \(window / 1000) s)"
                if entry.spec.policy.escalation == .reboot && state.shutdown == nil {
                    state.shutdown = ShutdownRequest(reason: .crashLoop, powerOff: false, component: name,
                                                     detail: "\(failures) failures in \(window / 1000) s; last: \(error)")
                    message += ", rebooting"
                } else {
                    message += ", giving up on it"
                }
            }
            state.entries[name] = entry
            return message
        }
        if let message {
            log(message)
            wake()
        }
    }

    /// Liveness report from a component (through its context).
    func beat(_ name: String, generation: Int) {
        let now = clock()
        state.withLock { state in
            guard var entry = state.entries[name], entry.generation == generation else { return }
            entry.lastBeat = now
            if entry.state == .hung || entry.state == .starting { entry.state = .running }
            state.entries[name] = entry
        }
    }

    /// Liveness for components the supervisor did not start (the PID 1 loop).
    public func beat(_ name: String) {
        let generation = state.withLock { $0.entries[name]?.generation ?? 0 }
        beat(name, generation: generation)
    }

    /// Called by the storage component after each write attempt to PERSIST.
    public func setPersistWritable(_ writable: Bool) {
        let now = clock()
        state.withLock { state in
            if writable {
                state.persistUnwritableSince = nil
            } else if state.persistUnwritableSince == nil {
                state.persistUnwritableSince = now
            }
        }
    }

    public func requestShutdown(_ request: ShutdownRequest) {
        state.withLock { state in
            if state.shutdown == nil { state.shutdown = request }
        }
        wake()
    }

    /// Milliseconds until the next component restart is due (0: due now); nil when none waits.
    public func nextStartInMilliseconds() -> Int64? {
        let now = clock()
        return state.withLock { state in
            state.entries.values.compactMap { $0.state == .backoff ? $0.nextStartAt : nil }.min().map { max(0, $0 - now) }
        }
    }

    /// The PID 1 loop's once-a-second duty: start what is due, mark what is
    /// hung, and hand back a pending shutdown.
    public func tick() -> ShutdownRequest? {
        let now = clock()
        var due: [String] = []
        var newlyHung: [(String, Int64)] = []
        let shutdown = state.withLock { (state: inout State) -> ShutdownRequest? in
            for name in state.order {
                guard var entry = state.entries[name] else { continue }
                if entry.state == .backoff, let at = entry.nextStartAt, at <= now { due.append(name) }
                if entry.state == .running, let deadline = entry.spec.livenessDeadlineMilliseconds,
                   now - entry.lastBeat > deadline {
                    entry.state = .hung
                    newlyHung.append((name, now - entry.lastBeat))
                    state.entries[name] = entry
                }
            }
            return state.shutdown
        }
        for (name, age) in newlyHung { log("component \(name) is hung: no liveness report for \(age / 1000) s") }
        if shutdown == nil { for name in due { start(name) } }
        return shutdown
    }

    /// Feed only while every critical component meets its liveness deadline
    /// and PERSIST takes writes (within its grace period).
    public func feedVerdict() -> FeedVerdict {
        let now = clock()
        return state.withLock { state in
            for name in state.order {
                guard let entry = state.entries[name], entry.spec.critical,
                      let deadline = entry.spec.livenessDeadlineMilliseconds else { continue }
                let age = now - entry.lastBeat
                if (entry.state == .running || entry.state == .hung) && age > deadline {
                    return .withhold(component: name,
                                     detail: "no liveness report for \(age / 1000) s (deadline \(deadline / 1000) s)")
                }
                if entry.state == .failed {
                    return .withhold(component: name, detail: "failed: \(entry.lastError ?? "unknown")")
                }
            }
            if let since = state.persistUnwritableSince, now - since > persistGraceMilliseconds {
                return .withhold(component: "storage", detail: "PERSIST not writable for \((now - since) / 1000) s")
            }
            return .feed
        }
    }

    /// Stops everything: raises the stop signal for tasks, SIGTERM to helper
    /// processes, then waits (reaping) up to `timeoutMilliseconds`.
    public func stopAll(timeoutMilliseconds: Int64) {
        let pids = state.withLock { (state: inout State) -> [pid_t] in
            state.stopping = true
            for name in state.order where state.entries[name]?.state != .failed {
                state.entries[name]?.state = .stopped
            }
            return state.entries.values.compactMap(\.pid)
        }
        stopSignal.raise()
        for pid in pids { _ = kill(pid, SIGTERM) }
        let deadline = clock() + timeoutMilliseconds
        while clock() < deadline {
            reaper.reapAll()
            if pids.allSatisfy({ kill($0, 0) != 0 }) { break }
            MonotonicClock.sleep(for: .milliseconds(50))
        }
    }

    public func snapshot() -> [ComponentStatus] {
        let now = clock()
        return state.withLock { state in
            state.order.compactMap { name in
                guard let entry = state.entries[name] else { return nil }
                let kind: String
                switch entry.spec.body {
                case .task: kind = "task"
                case .process: kind = "process"
                case .external: kind = "loop"
                }
                return ComponentStatus(name: name, kind: kind, critical: entry.spec.critical, state: entry.state,
                                       restarts: entry.tracker.totalRestarts, pid: entry.pid,
                                       lastBeatAgeMilliseconds: entry.spec.livenessDeadlineMilliseconds == nil
                                           ? nil : now - entry.lastBeat,
                                       lastError: entry.lastError)
            }
        }
    }
}
