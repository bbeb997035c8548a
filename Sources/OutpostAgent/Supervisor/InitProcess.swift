// What PID 1 does once the system is up: run the supervisor (Agent), reap
// every child through the one Reaper, and turn SIGTERM/SIGINT/SIGPWR, the
// ACPI power button and supervisor requests into an orderly stop.
//
// Signals are blocked and taken synchronously with sigtimedwait(2): no signal
// handler ever runs, so nothing async-signal-unsafe can happen in one. The
// 1 s timeout is the loop's tick: it reports the loop's own liveness, so a
// hung PID 1 loop stops the watchdog feed.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import OutpostFleet

public enum InitProcess {
    /// The signals PID 1 waits for. SIGCHLD keeps its default disposition
    /// (never SIG_IGN, which would lose exit statuses) but is blocked.
    static let handled: [Int32] = [SIGCHLD, SIGTERM, SIGINT, SIGPWR, SIGHUP]

    /// Blocks the handled signals. Call first thing in main, before any child
    /// or thread exists, so that no SIGCHLD or SIGTERM can be lost and every
    /// thread inherits the mask (only the PID 1 loop takes them).
    public static func blockSignals() {
        var set = signalSet()
        sigprocmask(SIG_BLOCK, &set, nil)
        // Ctrl-Alt-Del then sends SIGINT to PID 1 instead of an instant reboot.
        _ = OutpostShims_reboot(Int32(OutpostShims_RebootDisableCAD))
    }

    /// When PID 1 first gives memory back (MemoryTrim), and how often after that.
    static let trimFirst = Duration.seconds(45)
    static let trimEvery = Duration.seconds(300)

    /// Starts the supervisor, prints the ready (or rescue) line with the last
    /// boot's reason, and runs the PID 1 loop. Never returns.
    public static func run(outcome: BootOutcome, persistMount: String?) -> Never {
        // The vault before the agent: enrolment and unsealing take a few TPM commands and, the
        // first time, a mke2fs, and the agent arms the watchdog before its feeder runs.
        var clock = outcome.clock
        let vault = persistMount.map { _ in VaultService.open(slot: outcome.slotName, version: outcome.version) }
        if vault != nil { clock.mark("vault") }
        let agent = Agent(slot: outcome.slotName, version: outcome.version, persistMount: persistMount)
        agent.vault = vault
        if persistMount != nil, !outcome.diskPath.isEmpty {
            agent.update = UpdateService(diskPath: outcome.diskPath, bootedPartUUID: outcome.slotPartUUID,
                                         version: outcome.version, vault: vault)
        }
        agent.network = NetworkComponent.service(persistMount: persistMount)
        clock.mark("agent")
        let lastBoot = "last-boot=\(agent.lastBoot.reason.rawValue)"
        if let reason = outcome.rescueReason {
            Console.line("rescue slot=\(outcome.slotName) reason=\(reason) \(lastBoot)")
        } else {
            Console.line("ready slot=\(outcome.slotName) version=\(outcome.version) \(lastBoot)")
        }
        Console.line(clock.summary)
        if agent.lastBoot.reason != .firstBoot {
            var line = "last boot: \(agent.lastBoot.reason.rawValue)"
            if let component = agent.lastBoot.component { line += " component=\(component)" }
            if let time = agent.lastBoot.time { line += " time=\(time)" }
            if let detail = agent.lastBoot.detail { line += " (\(detail))" }
            Console.line(line)
        }
        // After the ready line (which reaches the controller from Console's buffer),
        // before any component: a trial's test window needs to know whether it is managed.
        agent.fleet = FleetComponent.setup(agent: agent)
        // A managed device runs the controller's apps section from its last good config (kept on
        // PERSIST) instead of apps.json, from the first round: no boot starts apps.json's apps only
        // to stop them when the client applies the stored config a moment later.
        var fleetClient: FleetClient?
        if case let .managed(fleet) = agent.fleet { fleetClient = fleet.client }
        agent.apps = AppsComponent.setup(persistMount: persistMount, managed: fleetClient != nil,
                                         controllerSection: fleetClient?.storedConfig().flatMap { $0.hasApps ? $0.apps : nil },
                                         vault: vault?.state, vaultMount: vault?.paths.mountPoint ?? VaultPaths().mountPoint)
        agent.start()

        var set = signalSet()
        var timeout = timespec(tv_sec: 1, tv_nsec: 0)
        // Boot's work leaves freed heap pages and code that ran once: they go back to the
        // kernel a while after boot and then every few minutes (MemoryTrim.swift).
        var trim = Deadline(after: trimFirst)
        while true {
            let signal = sigtimedwait(&set, nil, &timeout)
            var request: ShutdownRequest?
            switch signal {
            case SIGCHLD:
                agent.reaper.reapAll()
            case SIGTERM, SIGINT, SIGPWR:
                request = ShutdownRequest(reason: .user, powerOff: true, detail: "signal \(signal)")
            default:
                break // timeout (EAGAIN), EINTR, SIGHUP
            }
            if let pending = agent.tick() { request = request ?? pending }
            if trim.hasPassed {
                MemoryTrim.run()
                trim = Deadline(after: trimEvery)
            }
            if let request { stop(agent, request) }
        }
    }

    /// The orderly stop: record why, stop components, then the common path.
    static func stop(_ agent: Agent, _ request: ShutdownRequest) -> Never {
        agent.beginShutdown(request)
        shutdown(persistMount: agent.persistMount, powerOff: request.powerOff, reaper: agent.reaper,
                 beforeUnmount: { agent.vault?.close() }) {
            agent.disarmWatchdog()
        }
    }

    /// Stops all other processes, flushes and unmounts PERSIST, runs
    /// `beforeReboot` (the watchdog's magic close), then powers off or
    /// reboots. Unmount failures fall back to a read-only remount so the ext4
    /// journal is clean either way.
    public static func shutdown(persistMount: String?, powerOff: Bool, reaper: Reaper = .shared,
                                beforeUnmount: () -> Void = {}, beforeReboot: () -> Void = {}) -> Never {
        _ = kill(-1, SIGTERM)
        let deadline = MonotonicClock.now().milliseconds + 3000
        while MonotonicClock.now().milliseconds < deadline {
            reaper.reapAll()
            if kill(-1, 0) != 0 && errno == ESRCH { break }
            MonotonicClock.sleep(for: .milliseconds(100))
        }
        _ = kill(-1, SIGKILL)
        reaper.reapAll()
        sync()
        beforeUnmount()
        if let persistMount {
            do {
                try Sys.unmount(persistMount)
            } catch {
                _ = mount(nil, persistMount, nil, UInt(MS_REMOUNT | MS_RDONLY), nil)
            }
        }
        sync()
        beforeReboot()
        Console.line(powerOff ? "halt: powering off" : "halt: rebooting")
        _ = OutpostShims_reboot(Int32(powerOff ? OutpostShims_RebootPowerOff : OutpostShims_RebootRestart))
        // Only reached when not PID 1 or without CAP_SYS_BOOT (tests).
        exit(1)
    }

    private static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in handled { sigaddset(&set, signal) }
        return set
    }
}
