// Early boot runs from the initramfs, which lives in RAM. Its binary
// (outpost-init) does only early boot; once the verified root is mounted it
// execs /sbin/outpostd from that root (dm-verity checked, page cache the kernel
// can reclaim) as PID 1, handing over what it established in one file on /run:
//
//   /init (PID 1):          bringUp → /run/outpost-early-boot → execv
//   /sbin/outpostd (PID 1): read + delete the file → InitProcess.run
//
// A PID 1 that stayed the initramfs copy of outpostd kept its 25 MB binary and
// the libraries it maps pinned in RAM for the device's whole life, although
// switch root had deleted their files. /run is the tmpfs early boot mounted
// itself just before; the initramfs has an empty /run, so a first stage never
// finds a handoff.
//
// The file is lines of "key value" (values one line each, "\" escaped), so
// early boot's small binary needs no Foundation:
//   outpost-early-boot 1 | slot IMGA | version 1.0.0 | rescue REASON | persist 1
//   disk /dev/vda | partuuid UUID | clock DEBUG START LAST | step MS NAME ...
//   line UNIXMS TEXT ... | dropped N

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

public struct StageHandoff: Sendable, Equatable {
    public static let path = "/run/outpost-early-boot"
    public static let agentPath = "/sbin/outpostd"
    static let header = "outpost-early-boot 1"

    public var outcome: BootOutcome
    /// Lines printed before any controller client existed, still owed to its log.
    public var consoleLines: [Console.Line]
    public var consoleDropped: Int

    public init(_ outcome: BootOutcome, consoleLines: [Console.Line], consoleDropped: Int) {
        self.outcome = outcome
        self.consoleLines = consoleLines
        self.consoleDropped = consoleDropped
    }

    public static func == (a: StageHandoff, b: StageHandoff) -> Bool { a.text == b.text }

    /// The file's text.
    public var text: String {
        func escaped(_ value: String) -> String {
            var out = ""
            for c in value.unicodeScalars {
                switch c {
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                default: out.unicodeScalars.append(c)
                }
            }
            return out
        }
        var lines = [Self.header, "slot " + escaped(outcome.slotName), "version " + escaped(outcome.version)]
        if let rescue = outcome.rescueReason { lines.append("rescue " + escaped(rescue)) }
        lines += ["persist " + (outcome.persistMounted ? "1" : "0"), "disk " + escaped(outcome.diskPath),
                  "partuuid " + escaped(outcome.slotPartUUID),
                  "clock \(outcome.clock.enabled ? 1 : 0) \(outcome.clock.start) \(outcome.clock.lastMark)"]
        lines += outcome.clock.steps.map { "step \($0.milliseconds) " + escaped($0.name) }
        lines += consoleLines.map { "line \($0.timeUnixMs) " + escaped($0.message) }
        lines.append("dropped \(consoleDropped)")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Why a handoff file could not be read.
    public struct ParseError: Error, CustomStringConvertible {
        public var line: Int
        public var reason: String
        public var description: String { "line \(line): \(reason)" }
    }

    /// Parses the file's text; every key but `rescue`, `step` and `line` must be there.
    public init(parsing text: String) throws(ParseError) {
        func unescaped(_ value: Substring, line: Int) throws(ParseError) -> String {
            var out = ""
            var escaping = false
            for c in value.unicodeScalars {
                if escaping {
                    switch c {
                    case "\\": out += "\\"
                    case "n": out += "\n"
                    case "r": out += "\r"
                    default: throw ParseError(line: line, reason: "unknown escape \\\(c)")
                    }
                    escaping = false
                } else if c == "\\" {
                    escaping = true
                } else {
                    out.unicodeScalars.append(c)
                }
            }
            if escaping { throw ParseError(line: line, reason: "a value ends in \\") }
            return out
        }
        let rows = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard rows.first.map(String.init) == Self.header else { throw ParseError(line: 1, reason: "not \"\(Self.header)\"") }
        var fields: [String: String] = [:]
        var rescue: String?
        var clock: (enabled: Bool, start: Int64, last: Int64)?
        var steps: [StepClock.Step] = []
        var console: [Console.Line] = []
        var dropped: Int?
        for (index, row) in rows.enumerated().dropFirst() where !row.isEmpty {
            let number = index + 1
            let key = row.prefix { $0 != " " }
            let rest = row.dropFirst(key.count + 1)
            /// "123 rest" → (123, "rest"): a number, then the rest of the value.
            func numberAndRest(_ text: Substring) throws(ParseError) -> (Int64, Substring) {
                let digits = text.prefix { $0 != " " }
                guard let value = Int64(digits) else { throw ParseError(line: number, reason: "\(key): not a number: \(digits)") }
                return (value, text.dropFirst(digits.count + 1))
            }
            switch key {
            case "slot", "version", "disk", "partuuid", "persist": fields[String(key)] = try unescaped(rest, line: number)
            case "rescue": rescue = try unescaped(rest, line: number)
            case "clock":
                let parts = rest.split(separator: " ")
                guard parts.count == 3, let start = Int64(parts[1]), let last = Int64(parts[2]) else {
                    throw ParseError(line: number, reason: "clock: \(rest)")
                }
                clock = (parts[0] == "1", start, last)
            case "step":
                let (ms, name) = try numberAndRest(rest)
                steps.append(StepClock.Step(name: try unescaped(name, line: number), milliseconds: ms))
            case "line":
                let (time, message) = try numberAndRest(rest)
                guard time >= 0 else { throw ParseError(line: number, reason: "line: a negative time") }
                console.append(Console.Line(message: try unescaped(message, line: number), timeUnixMs: UInt64(time)))
            case "dropped":
                guard let value = Int(rest), value >= 0 else { throw ParseError(line: number, reason: "dropped: \(rest)") }
                dropped = value
            default: throw ParseError(line: number, reason: "unknown key \"\(key)\"")
            }
        }
        for key in ["slot", "version", "persist", "disk", "partuuid"] where fields[key] == nil {
            throw ParseError(line: rows.count, reason: "no \(key)")
        }
        guard let clock else { throw ParseError(line: rows.count, reason: "no clock") }
        guard let dropped else { throw ParseError(line: rows.count, reason: "no dropped") }
        guard fields["persist"] == "1" || fields["persist"] == "0" else { throw ParseError(line: rows.count, reason: "persist: not 0 or 1") }
        outcome = BootOutcome(slotName: fields["slot"] ?? "", version: fields["version"] ?? "", rescueReason: rescue,
                              persistMounted: fields["persist"] == "1", diskPath: fields["disk"] ?? "",
                              slotPartUUID: fields["partuuid"] ?? "",
                              clock: StepClock(enabled: clock.enabled, start: clock.start, steps: steps, last: clock.last))
        consoleLines = console
        consoleDropped = dropped
    }

    /// Execs the root's outpostd as PID 1 with the handoff written. Returns only when that is
    /// impossible (no such binary, /run not writable, execv refused), with the reason.
    public static func execAgentFromRoot(_ outcome: BootOutcome) -> String {
        guard Sys.exists(agentPath) else { return "no \(agentPath) in the root" }
        let console = Console.buffered()
        let handoff = StageHandoff(outcome, consoleLines: console.lines, consoleDropped: console.dropped)
        do {
            try FileIO.writeAtomically(Array(handoff.text.utf8), to: path, mode: 0o600)
        } catch {
            return "cannot write \(path): \(error)"
        }
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("outpostd"), nil]
        execv(agentPath, argv)
        let error = SystemError.current("execv", agentPath)
        argv.forEach { free($0) }
        _ = unlink(path)
        return "\(error)"
    }

    /// In PID 1: the handoff early boot left, read and deleted, with the console's owed lines
    /// restored and the exec's time marked; nil when there is none (this is early boot).
    /// A handoff that cannot be read ends the boot with one error line and a reboot.
    public static func resume() -> BootOutcome? {
        let bytes: [UInt8]?
        do { bytes = try FileIO.readIfPresent(path, limit: 4 << 20) } catch {
            EarlyBoot.fail("cannot read \(path): \(error)")
        }
        guard let bytes else { return nil }
        _ = unlink(path)
        let handoff: StageHandoff
        do { handoff = try StageHandoff(parsing: String(decoding: bytes, as: UTF8.self)) } catch {
            EarlyBoot.fail("\(path) is not early boot's handoff: \(error)")
        }
        Console.restoreBuffered(lines: handoff.consoleLines, dropped: handoff.consoleDropped)
        var outcome = handoff.outcome
        outcome.clock.mark("exec")
        return outcome
    }
}
