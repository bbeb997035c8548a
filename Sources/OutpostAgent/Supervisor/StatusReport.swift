// What `outpostd status [--json]` prints. Rendered inside PID 1 (the only
// process that knows the component states) and sent over the control socket,
// so the client needs no parser and the text and JSON views never disagree.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// A point-in-time view of the agent.
public struct StatusReport: Sendable {
    public var uptimeSeconds: Double
    public var slot: String
    public var version: String
    public var lastBoot: LastBoot
    public var components: [ComponentStatus]
    public var watchdog: Watchdog.Info?
    public var watchdogError: String?
    public var process: ProcessStats.Sample
    public var cpuPercentLastMinute: Double?
    public var orphansReaped: Int
    /// The network manager's own status document (JSON), when it runs.
    public var networkJSON: String?
    public var networkActive: String??

    init(agent: Agent) {
        uptimeSeconds = ProcessStats.uptimeSeconds() ?? 0
        slot = agent.slot
        version = agent.version
        lastBoot = agent.lastBoot
        components = agent.supervisor.snapshot()
        watchdog = agent.watchdog?.info
        watchdogError = agent.watchdogError
        let sample = ProcessStats.sample()
        process = sample
        let now = MonotonicClock.now().milliseconds
        cpuPercentLastMinute = agent.cpu.withLock { $0.percent(now: now, ticks: sample.cpuTicks) }
        orphansReaped = agent.reaper.orphansReaped
        networkJSON = agent.network?.statusJSON()
        networkActive = agent.network.map { $0.activePort }
    }

    public func text() -> String {
        var lines = [
            "uptime: \(Int(uptimeSeconds)) s",
            "slot: \(slot)  version: \(version)",
            "last boot: \(lastBoot.reason.rawValue)"
                + (lastBoot.component.map { " component=\($0)" } ?? "")
                + (lastBoot.time.map { " time=\($0)" } ?? "")
                + (lastBoot.detail.map { " (\($0))" } ?? ""),
        ]
        if let watchdog {
            lines.append("watchdog: \(watchdog.device) \(watchdog.identity) timeout=\(watchdog.timeoutSeconds) s"
                         + (watchdog.isSoftware ? " SOFTWARE FALLBACK (softdog)" : " hardware")
                         + (watchdog.bootStatusFlags.map { " bootstatus=0x\(String($0, radix: 16))" } ?? ""))
        } else {
            lines.append("watchdog: none (\(watchdogError ?? "not opened"))")
        }
        lines.append("components:")
        for c in components {
            var line = "  \(c.name.padding(12)) \(c.state.rawValue.padding(8)) restarts=\(c.restarts)"
            if c.critical { line += " critical" }
            if let pid = c.pid { line += " pid=\(pid)" }
            if let age = c.lastBeatAgeMilliseconds { line += " beat=\(age / 1000)s ago" }
            if let error = c.lastError { line += " last-error=\"\(error)\"" }
            lines.append(line)
        }
        if let networkActive {
            lines.append("network: active port \(networkActive ?? "none") (outpostd status --json has every port)")
        }
        lines.append("agent: pid=\(process.pid) rss=\(process.rssKiB ?? 0) KiB threads=\(process.threads ?? 0)"
                     + " cpu-1min=\(cpuPercentLastMinute.map { formatted($0) + "%" } ?? "n/a")"
                     + " zombies=\(process.zombies) orphans-reaped=\(orphansReaped)")
        return lines.joined(separator: "\n") + "\n"
    }

    public func json() -> String {
        var boot: [(String, JSON)] = [("reason", .string(lastBoot.reason.rawValue))]
        if let c = lastBoot.component { boot.append(("component", .string(c))) }
        if let t = lastBoot.time { boot.append(("time", .int(t))) }
        if let d = lastBoot.detail { boot.append(("detail", .string(d))) }
        let watchdogJSON: JSON = watchdog.map { w in
            .object([("device", .string(w.device)), ("identity", .string(w.identity)),
                     ("timeoutSeconds", .int(Int64(w.timeoutSeconds))), ("software", .bool(w.isSoftware)),
                     ("bootStatus", w.bootStatusFlags.map { .int(Int64($0)) } ?? .null)])
        } ?? .object([("device", .null), ("error", .string(watchdogError ?? "not opened"))])
        let componentsJSON = JSON.array(components.map { c in
            .object([("name", .string(c.name)), ("kind", .string(c.kind)), ("critical", .bool(c.critical)),
                     ("state", .string(c.state.rawValue)), ("restarts", .int(Int64(c.restarts))),
                     ("pid", c.pid.map { .int(Int64($0)) } ?? .null),
                     ("lastBeatAgeMs", c.lastBeatAgeMilliseconds.map { .int($0) } ?? .null),
                     ("lastError", c.lastError.map { .string($0) } ?? .null)])
        })
        let agent = JSON.object([
            ("pid", .int(Int64(process.pid))), ("rssKiB", process.rssKiB.map { .int($0) } ?? .null),
            ("threads", process.threads.map { .int($0) } ?? .null),
            ("cpuTicks", process.cpuTicks.map { .int($0) } ?? .null),
            ("cpuPercentLastMinute", cpuPercentLastMinute.map { .double($0) } ?? .null),
            ("zombies", .int(Int64(process.zombies))), ("orphansReaped", .int(Int64(orphansReaped))),
        ])
        return JSON.object([
            ("uptimeSeconds", .double(uptimeSeconds)), ("slot", .string(slot)), ("version", .string(version)),
            ("lastBoot", .object(boot)), ("watchdog", watchdogJSON), ("components", componentsJSON), ("agent", agent),
            ("network", networkJSON.map { .raw($0) } ?? .null),
        ]).rendered + "\n"
    }
}

func formatted(_ value: Double) -> String {
    let hundredths = Int64((value * 100).rounded())
    let fraction = hundredths % 100
    return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// A minimal JSON value with ordered keys: enough for the status report
/// without pulling Foundation into the static PID 1 binary.
public indirect enum JSON: Sendable {
    case null, bool(Bool), int(Int64), double(Double), string(String)
    case array([JSON]), object([(String, JSON)])
    /// An already rendered JSON document (another module's report).
    case raw(String)

    public var rendered: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return d.isFinite ? formatted(d) : "null"
        case .string(let s): return JSON.quote(s)
        case .raw(let text): return text
        case .array(let items): return "[" + items.map(\.rendered).joined(separator: ",") + "]"
        case .object(let fields): return "{" + fields.map { JSON.quote($0.0) + ":" + $0.1.rendered }
            .joined(separator: ",") + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// Figures about outpostd itself and the process table, from /proc.
public enum ProcessStats {
    public struct Sample: Sendable {
        public var pid: Int32
        public var rssKiB: Int64?
        public var threads: Int64?
        public var cpuTicks: Int64?
        public var zombies: Int
    }

    static func sample() -> Sample {
        let status = (try? Sys.readText("/proc/self/status")) ?? ""
        func field(_ name: String) -> Int64? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
            return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { Int64($0) }
        }
        return Sample(pid: getpid(), rssKiB: field("VmRSS"), threads: field("Threads"), cpuTicks: cpuTicks(),
                      zombies: zombieCount())
    }

    /// utime + stime of this process in clock ticks (fields 14 and 15 of
    /// /proc/self/stat, counted after the parenthesised command name).
    static func cpuTicks() -> Int64? {
        guard let text = try? Sys.readText("/proc/self/stat") else { return nil }
        return statFields(text).flatMap { fields in
            fields.count > 12 ? (Int64(fields[11]) ?? 0) + (Int64(fields[12]) ?? 0) : nil
        }
    }

    /// Fields after "pid (comm) ": index 0 is the state letter.
    static func statFields(_ text: String) -> [Substring]? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ")
    }

    /// Processes in state Z: children nobody has waited for yet.
    static func zombieCount() -> Int {
        let names = (try? Sys.listDirectory("/proc")) ?? []
        return names.filter { $0.allSatisfy(\.isNumber) }.reduce(0) { count, pid in
            guard let text = try? Sys.readText("/proc/\(pid)/stat"), statFields(text)?.first == "Z" else { return count }
            return count + 1
        }
    }

    static func uptimeSeconds() -> Double? {
        (try? Sys.readText("/proc/uptime")).flatMap { Double($0.split(separator: " ").first ?? "") }
    }
}
