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
import OutpostEarlyBoot
import OutpostFleet

public enum InitProcess {
    /// outpostd as PID 1: the second stage, exec'd by early boot from the verified root
    /// (StageHandoff), or, when outpostd itself is the initramfs's /init (an image built
    /// without outpost-init), early boot first and then the agent. Never returns.
    public static func runAsPID1() -> Never {
        PID1.blockSignals()
        Console.attachIfNeeded()
        if let outcome = StageHandoff.resume() {
            // InitProcess prints the ready/rescue line: it carries last-boot=<reason>.
            run(outcome: outcome, persistMount: outcome.persistMounted ? DataPartitions.persistMount : nil)
        }
        EarlyBoot.runAsInit { outcome, failure in
            Console.line("warning: \(failure); the initramfs copy of outpostd stays PID 1")
            run(outcome: outcome, persistMount: outcome.persistMounted ? DataPartitions.persistMount : nil)
        }
    }

    /// When PID 1 first gives memory back (MemoryTrim), and how often after that.
    static let trimFirst = Duration.seconds(45)
    static let trimEvery = Duration.seconds(300)

    /// Starts the supervisor, prints the ready (or rescue) line with the last
    /// boot's reason, and runs the PID 1 loop. Never returns.
    public static func run(outcome: BootOutcome, persistMount: String?) -> Never {
        var clock = outcome.clock
        if persistMount != nil {
            let record = BootRecord(slot: outcome.slotName, partUUID: outcome.slotPartUUID, version: outcome.version,
                                    rescueReason: outcome.rescueReason, pcrs: BootRecord.readPCRs())
            do { try record.write() } catch { Console.line("warning: cannot write \(BootRecord.path): \(error)") }
        }
        // The vault before the agent: enrolment and unsealing take a few TPM commands and, the
        // first time, a mke2fs, and the agent arms the watchdog before its feeder runs.
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

        var set = PID1.signalSet()
        // Boot's work leaves freed heap pages and code that ran once: they go back to the
        // kernel a while after boot and then every few minutes (MemoryTrim.swift).
        var trim = Deadline(after: trimFirst)
        while true {
            // Until a signal, the next restart due, or the tick; the supervisor wakes it sooner (PID1.wake).
            let wait = max(10, min(agent.timing.tickMilliseconds, agent.supervisor.nextStartInMilliseconds() ?? .max))
            var timeout = timespec(tv_sec: Int(wait / 1000), tv_nsec: Int(wait % 1000) * 1_000_000)
            let signal = sigtimedwait(&set, nil, &timeout)
            var request: ShutdownRequest?
            switch signal {
            case SIGCHLD:
                agent.reaper.reapAll()
            case SIGTERM, SIGINT, SIGPWR:
                request = ShutdownRequest(reason: .user, powerOff: true, detail: "signal \(signal)")
            default:
                break // timeout (EAGAIN), EINTR, SIGHUP, SIGUSR2 (a wake-up)
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
        // PID 1's stop path lives in OutpostEarlyBoot (PID1.swift), which early boot's binary shares.
        PID1.shutdown(persistMount: agent.persistMount, powerOff: request.powerOff, reaper: agent.reaper,
                      beforeUnmount: { agent.vault?.close() }) {
            agent.disarmWatchdog()
        }
    }
}
