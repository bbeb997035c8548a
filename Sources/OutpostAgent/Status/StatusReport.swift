// What `outpostd status [--json]` prints. Rendered inside PID 1 (the only
// process that knows the component states) and sent over the control socket,
// so the client needs no parser and the text and JSON views never disagree.
// The JSON view is this type's `Encodable` conformance, rendered like every
// document on the device by JSONDocument (FoundationEssentials' JSONEncoder,
// keys sorted). Its field names are read by bench/agent-footprint.sh and the
// QEMU tests, so they change only with care; absent values are `null`, never
// missing, so a reader can tell "unknown" from "not reported by this version".

#if canImport(Glibc)
import Glibc
#endif
import OutpostApps
import OutpostNetwork
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
    /// The same minute by thread name, busiest first (empty until 10 s of samples).
    public var cpuByThreadLastMinute: [(name: String, percent: Double)] = []
    public var orphansReaped: Int
    /// The network manager's own status document, when it runs.
    public var network: NetworkStatusDocument?
    public var networkActive: String??
    /// The controller connection (nil: the agent has not decided yet).
    public var fleet: FleetStatusDocument? = nil
    /// Every app instance (nil: the apps component does not run; empty: no apps configured).
    public var apps: [AppStatus]? = nil
    /// The vault's state line (nil: PERSIST is not mounted).
    public var vault: VaultState? = nil
    public var vaultFloor: UInt64? = nil
}

extension StatusReport {
    /// Samples the agent now.
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
        let threads = ProcessStats.threadTicks()
        cpuByThreadLastMinute = agent.cpu.withLock { $0.percentByThread(now: now, threads: threads) }
        orphansReaped = agent.reaper.orphansReaped
        network = agent.network?.statusDocument()
        networkActive = agent.network.map { $0.activePort }
        fleet = agent.fleet.map(FleetStatusDocument.init)
        apps = agent.apps.map { $0.service?.status() ?? [] }
        vault = agent.vault?.state
        vaultFloor = agent.vault?.floor
    }
}

extension StatusReport {
    /// The view a person reads: `outpostd status` and the console's `status`.
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
        if let fleet { lines.append(fleet.line) }
        for app in apps ?? [] { lines.append(app.line) }
        if let vault { lines.append(vault.line) }
        lines.append("agent: pid=\(process.pid) rss=\(process.rssKiB ?? 0) KiB (anon \(process.rssAnonKiB ?? 0), file \(process.rssFileKiB ?? 0), shmem \(process.rssShmemKiB ?? 0)) threads=\(process.threads ?? 0)"
                     + " cpu-1min=\(cpuPercentLastMinute.map { formatted($0) + "%" } ?? "n/a")"
                     + " zombies=\(process.zombies) orphans-reaped=\(orphansReaped)")
        if !cpuByThreadLastMinute.isEmpty {
            lines.append("agent: cpu-1min by thread: "
                         + cpuByThreadLastMinute.prefix(8).map { "\($0.name) \(formatted($0.percent))%" }.joined(separator: ", "))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The one-line JSON document (with a trailing newline) for
    /// `status --json` and /persist/status/last-status.json.
    public func json() -> String {
        do {
            return try JSONDocument.line(self) + "\n"
        } catch {
            let fallback = (try? JSONDocument.line(["error": "status: cannot encode: \(error)"]))
            return (fallback ?? #"{"error":"status: cannot encode"}"#) + "\n"
        }
    }
}

extension StatusReport: Encodable {
    private enum Keys: String, CodingKey {
        case uptimeSeconds, slot, version, lastBoot, watchdog, components, agent, network, fleet, apps, vault
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(hundredths(uptimeSeconds), forKey: .uptimeSeconds)
        try container.encode(slot, forKey: .slot)
        try container.encode(version, forKey: .version)
        try container.encode(lastBoot, forKey: .lastBoot)
        try container.encode(WatchdogDocument(info: watchdog, error: watchdogError), forKey: .watchdog)
        try container.encode(components, forKey: .components)
        try container.encode(AgentDocument(process: process, cpuPercentLastMinute: cpuPercentLastMinute,
                                           cpuByThread: cpuByThreadLastMinute, orphansReaped: orphansReaped), forKey: .agent)
        try container.encode(network, forKey: .network)
        try container.encode(fleet, forKey: .fleet)
        try container.encode(apps?.map(AppDocument.init), forKey: .apps)
        try container.encode(vault.map { VaultDocument(state: $0, floor: vaultFloor) }, forKey: .vault)
    }

    /// `watchdog`: the device in use, or why there is none.
    private struct WatchdogDocument: Encodable {
        var info: Watchdog.Info?
        var error: String?

        enum Keys: String, CodingKey { case device, identity, timeoutSeconds, software, bootStatus, error }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            guard let info else {
                try container.encodeNil(forKey: .device)
                try container.encode(error ?? "not opened", forKey: .error)
                return
            }
            try container.encode(info.device, forKey: .device)
            try container.encode(info.identity, forKey: .identity)
            try container.encode(info.timeoutSeconds, forKey: .timeoutSeconds)
            try container.encode(info.isSoftware, forKey: .software)
            try container.encode(info.bootStatusFlags, forKey: .bootStatus)
        }
    }

    /// `agent`: outpostd's own footprint and the process table's health.
    private struct AgentDocument: Encodable {
        var process: ProcessStats.Sample
        var cpuPercentLastMinute: Double?
        var cpuByThread: [(name: String, percent: Double)]
        var orphansReaped: Int

        enum Keys: String, CodingKey {
            case pid, rssKiB, rssAnonKiB, rssFileKiB, rssShmemKiB, threads, cpuTicks, cpuPercentLastMinute,
                 cpuPercentLastMinuteByThread, zombies, orphansReaped
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            try container.encode(process.pid, forKey: .pid)
            try container.encode(process.rssKiB, forKey: .rssKiB)
            try container.encode(process.rssAnonKiB, forKey: .rssAnonKiB)
            try container.encode(process.rssFileKiB, forKey: .rssFileKiB)
            try container.encode(process.rssShmemKiB, forKey: .rssShmemKiB)
            try container.encode(process.threads, forKey: .threads)
            try container.encode(process.cpuTicks, forKey: .cpuTicks)
            try container.encode(cpuPercentLastMinute.flatMap(hundredths), forKey: .cpuPercentLastMinute)
            // Thread name → percent (names are unique: the sampler sums threads of one name).
            let byThread = Dictionary(cpuByThread.compactMap { t in hundredths(t.percent).map { (t.name, $0) } },
                                      uniquingKeysWith: +)
            try container.encode(byThread, forKey: .cpuPercentLastMinuteByThread)
            try container.encode(process.zombies, forKey: .zombies)
            try container.encode(orphansReaped, forKey: .orphansReaped)
        }
    }
}

extension ComponentStatus: Encodable {
    private enum Keys: String, CodingKey {
        case name, kind, critical, state, restarts, pid, lastBeatAgeMs, lastError
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(name, forKey: .name)
        try container.encode(kind, forKey: .kind)
        try container.encode(critical, forKey: .critical)
        try container.encode(state.rawValue, forKey: .state)
        try container.encode(restarts, forKey: .restarts)
        try container.encode(pid, forKey: .pid)
        try container.encode(lastBeatAgeMilliseconds, forKey: .lastBeatAgeMs)
        try container.encode(lastError, forKey: .lastError)
    }
}

/// Two decimals are all a person or a script needs of a rate or an uptime;
/// a value that is not finite (no samples yet) is `null`, which JSON can hold.
func hundredths(_ value: Double) -> Double? {
    value.isFinite ? (value * 100).rounded() / 100 : nil
}

func formatted(_ value: Double) -> String {
    let hundredths = Int64((value * 100).rounded())
    let fraction = hundredths % 100
    return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// `apps[]`: one instance's state, its error, and what it costs.
struct AppDocument: Encodable {
    var status: AppStatus

    private enum Keys: String, CodingKey {
        case name, state, error, downloadedBytes, totalBytes, activate, stoppedByOperator, pid, restarts, bootSeconds,
             runningSinceUnix, memoryLimitBytes, residentBytes, diskBytes, cpuSeconds, addresses, acl
    }

    /// `apps[].acl[]`: one rule's counter, so an operator sees which rule dropped what.
    struct ACLDocument: Encodable {
        var tap: String
        var rule: String
        var action: String
        var packets: UInt64
        var bytes: UInt64
    }

    func encode(to encoder: any Encoder) throws {
        let s = status
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(s.name, forKey: .name)
        try container.encode(s.state, forKey: .state)
        try container.encode(s.error, forKey: .error)
        try container.encode(s.downloadedBytes, forKey: .downloadedBytes)
        try container.encode(s.totalBytes, forKey: .totalBytes)
        try container.encode(s.activate, forKey: .activate)
        try container.encode(s.stoppedByOperator, forKey: .stoppedByOperator)
        try container.encode(s.pid, forKey: .pid)
        try container.encode(s.restarts, forKey: .restarts)
        try container.encode(s.bootSeconds.flatMap(hundredths), forKey: .bootSeconds)
        try container.encode(s.runningSinceUnix, forKey: .runningSinceUnix)
        try container.encode(s.memoryLimitBytes, forKey: .memoryLimitBytes)
        try container.encode(s.residentBytes, forKey: .residentBytes)
        try container.encode(s.diskBytes, forKey: .diskBytes)
        try container.encode(s.cpuSeconds.flatMap(hundredths), forKey: .cpuSeconds)
        try container.encode(s.addresses, forKey: .addresses)
        try container.encode(s.acl.map { ACLDocument(tap: $0.tap, rule: $0.rule, action: $0.action, packets: $0.packets, bytes: $0.bytes) },
                             forKey: .acl)
    }
}

/// `vault`: "unlocked", "locked" or "unavailable", the line's detail, and the TPM floor last read.
struct VaultDocument: Encodable {
    var state: String
    var detail: String
    var floor: UInt64?

    init(state: VaultState, floor: UInt64?) {
        switch state {
        case .unlocked(let detail): (self.state, self.detail) = ("unlocked", detail)
        case .locked(let reason): (self.state, self.detail) = ("locked", reason)
        case .unavailable(let reason): (self.state, self.detail) = ("unavailable", reason)
        }
        self.floor = floor
    }

    enum Keys: String, CodingKey { case state, detail, floor }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(state, forKey: .state)
        try c.encode(detail, forKey: .detail)
        try c.encode(floor, forKey: .floor)
    }
}
