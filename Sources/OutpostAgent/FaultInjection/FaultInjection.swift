// Fault injection for tests and field diagnosis, compiled only into debug
// images (DEBUG, or -DOUTPOST_FAULT_INJECTION on a release build): a release
// outpostd contains none of this code, so no file and no remote request can
// reach it. At boot the agent takes /persist/debug/fault (renamed to
// fault.done first, so a fault that resets the machine runs once) and runs
// its lines in order:
//
//   hang COMPONENT        the component blocks at its next beat (init = PID 1 loop)
//   crash COMPONENT [N]   its next N beats (default: all) throw
//   stop-watchdog         the feeder stops feeding, recording nothing
//   helper NAME ARGS...   supervise `outpostd debug ARGS...` as component NAME
//   orphans N             run `outpostd debug orphans N` (leaves N orphans)
//   status [--json]       run `outpostd status [--json]` onto the console
//   reboot REASON [SLOT]  an orderly reboot with that reason (update: SLOT expected)
//   panic                 crash the kernel (sysrq c)
//   sleep SECONDS

#if DEBUG || OUTPOST_FAULT_INJECTION
#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot
import Synchronization

public final class FaultInjection: Sendable {
    public static let marker = "outpost-fault-injection"
    public static let path = "/persist/debug/fault"
    public static let shared = FaultInjection()
    static let agentBinary = "/sbin/outpostd"

    public enum Command: Equatable, Sendable {
        case hang(String)
        case crash(String, count: Int?)
        case stopWatchdog
        case helper(name: String, arguments: [String])
        case orphans(Int)
        case status(json: Bool)
        case reboot(RebootReason, slot: String?)
        case panic
        case sleep(Int)
    }

    public struct Injected: Error, CustomStringConvertible {
        public var description: String { "crash injected by \(FaultInjection.marker)" }
    }

    private enum Fault { case hang, crash(remaining: Int?) }
    private let faults = Mutex<[String: Fault]>([:])
    private let stopped = Mutex(false)

    public var watchdogStopped: Bool { stopped.withLock { $0 } }

    /// Parses the fault file; a bad line is an error naming its number.
    public static func parse(_ text: String) throws(ParseError) -> [Command] {
        var commands: [Command] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let words = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
                .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let verb = words.first else { continue }
            let args = Array(words.dropFirst())
            let bad = ParseError(line: index + 1, text: String(raw))
            switch (verb, args.count) {
            case ("hang", 1): commands.append(.hang(args[0]))
            case ("crash", 1): commands.append(.crash(args[0], count: nil))
            case ("crash", 2):
                guard let n = Int(args[1]), n > 0 else { throw bad }
                commands.append(.crash(args[0], count: n))
            case ("stop-watchdog", 0): commands.append(.stopWatchdog)
            case ("helper", 2...): commands.append(.helper(name: args[0], arguments: Array(args.dropFirst())))
            case ("orphans", 1):
                guard let n = Int(args[0]), (1...64).contains(n) else { throw bad }
                commands.append(.orphans(n))
            case ("status", 0): commands.append(.status(json: false))
            case ("status", 1) where args[0] == "--json": commands.append(.status(json: true))
            case ("reboot", 1...2):
                guard let reason = RebootReason(rawValue: args[0]) else { throw bad }
                commands.append(.reboot(reason, slot: args.count == 2 ? args[1] : nil))
            case ("panic", 0): commands.append(.panic)
            case ("sleep", 1):
                guard let n = Int(args[0]), n >= 0 else { throw bad }
                commands.append(.sleep(n))
            default: throw bad
            }
        }
        return commands
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var line: Int
        public var text: String
        public var description: String { "\(FaultInjection.path) line \(line): cannot parse '\(text)'" }
    }

    /// Called from every beat: applies a fault armed for `component`.
    func checkpoint(_ component: String) throws {
        let fault = faults.withLock { (faults: inout [String: Fault]) -> Fault? in
            guard let fault = faults[component] else { return nil }
            if case .crash(let remaining?) = fault {
                faults[component] = remaining > 1 ? .crash(remaining: remaining - 1) : nil
            }
            return fault
        }
        switch fault {
        case nil: return
        case .hang:
            Console.line("debug: fault: \(component) hangs now")
            while true { MonotonicClock.sleep(for: .milliseconds(3_600_000)) }
        case .crash:
            throw Injected()
        }
    }

    /// Takes the fault file and runs it on its own thread.
    func startScript(agent: Agent) {
        let taken = Self.path + ".done"
        guard Sys.exists(Self.path), rename(Self.path, taken) == 0 else { return }
        let commands: [Command]
        do {
            commands = try Self.parse(try Sys.readText(taken))
        } catch {
            Console.line("debug: fault: \(error)")
            return
        }
        sync()
        Console.line("debug: fault: \(Self.marker): running \(commands.count) commands")
        try? NamedThread.detach(name: "fault") { [self] in
            for command in commands { run(command, agent: agent) }
        }
    }

    func run(_ command: Command, agent: Agent) {
        Console.line("debug: fault: \(command)")
        switch command {
        case .hang(let name): faults.withLock { $0[name] = .hang }
        case .crash(let name, let count): faults.withLock { $0[name] = .crash(remaining: count) }
        case .stopWatchdog: stopped.withLock { $0 = true }
        case .helper(let name, let arguments):
            agent.supervisor.launch(ComponentSpec(name: name, body: .process(path: Self.agentBinary,
                                                                             arguments: ["debug"] + arguments)))
        case .orphans(let n): oneShot(agent, ["debug", "orphans", String(n)])
        case .status(let json): oneShot(agent, json ? ["status", "--json"] : ["status"])
        case .reboot(let reason, let slot):
            agent.supervisor.requestShutdown(ShutdownRequest(reason: reason, powerOff: false, component: "debug",
                                                             expectedSlot: slot, detail: "requested by the fault file"))
        case .panic:
            let fd = Glibc.open("/proc/sysrq-trigger", O_WRONLY)
            if fd >= 0 { _ = Glibc.write(fd, "c", 1) }
        case .sleep(let seconds): MonotonicClock.sleep(for: .milliseconds(seconds * 1000))
        }
    }

    func oneShot(_ agent: Agent, _ arguments: [String]) {
        do {
            try agent.reaper.spawn(Self.agentBinary, arguments) { exit in
                Console.line("debug: fault: outpostd \(arguments.joined(separator: " ")) \(exit)")
            }
        } catch {
            Console.line("debug: fault: \(error)")
        }
    }
}
#endif
