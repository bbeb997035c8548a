// Metrics read from the kernel's own files: cheap to gather, cumulative where
// it matters (bytes, errors), so a report lost on the way loses nothing.
//
//   /proc/stat                        CPU busy share since the last sample
//   /proc/meminfo                     MemTotal, MemAvailable
//   statvfs(PERSIST)                  used and total bytes
//   /sys/class/net/*/statistics/*     rx/tx bytes and errors per port (not lo)
//   /proc/uptime                      seconds since boot

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostProto
import Synchronization

public final class MetricsCollector: Sendable {
    private let persistPath: String
    private let procRoot: String
    private let netRoot: String
    private let previousCPU = Mutex<(busy: UInt64, total: UInt64)?>(nil)

    /// `procRoot` and `netRoot` are there for tests that feed recorded files.
    public init(persistPath: String, procRoot: String = "/proc", netRoot: String = "/sys/class/net") {
        self.persistPath = persistPath
        self.procRoot = procRoot
        self.netRoot = netRoot
    }

    /// One sample; fields whose source cannot be read stay zero.
    public func sample(watchdog: Outpost_Api_V1_WatchdogState?) -> Outpost_Api_V1_DeviceMetrics {
        var m = Outpost_Api_V1_DeviceMetrics()
        m.timeUnixMs = Wallclock.unixMilliseconds()
        if let uptime = text(procRoot + "/uptime")?.split(separator: " ").first.flatMap({ Double($0) }) {
            m.uptimeS = UInt64(uptime)
        }
        if let cpu = text(procRoot + "/stat").flatMap(Self.cpuTimes) {
            m.cpuPercent = previousCPU.withLock { previous in
                defer { previous = cpu }
                guard let previous, cpu.total > previous.total else { return 0 }
                return min(100, Double(cpu.busy &- previous.busy) * 100 / Double(cpu.total - previous.total))
            }
        }
        if let meminfo = text(procRoot + "/meminfo") {
            let values = Self.meminfo(meminfo)
            m.memoryTotalBytes = values["MemTotal"] ?? 0
            m.memoryUsedBytes = m.memoryTotalBytes - min(m.memoryTotalBytes, values["MemAvailable"] ?? 0)
        }
        var fs = statvfs()
        if statvfs(persistPath, &fs) == 0 {
            let unit = UInt64(fs.f_frsize)
            m.persistTotalBytes = UInt64(fs.f_blocks) * unit
            m.persistUsedBytes = (UInt64(fs.f_blocks) - UInt64(fs.f_bfree)) * unit
        }
        m.ports = portCounters()
        if let watchdog { m.watchdog = watchdog }
        return m
    }

    func portCounters() -> [Outpost_Api_V1_PortCounters] {
        let names = ((try? FleetFiles.list(netRoot)) ?? []).filter { $0 != "lo" }.sorted()
        return names.map { name in
            var p = Outpost_Api_V1_PortCounters()
            p.name = name
            let base = netRoot + "/" + name + "/statistics/"
            p.rxBytes = number(base + "rx_bytes")
            p.txBytes = number(base + "tx_bytes")
            p.rxErrors = number(base + "rx_errors")
            p.txErrors = number(base + "tx_errors")
            return p
        }
    }

    private func text(_ path: String) -> String? {
        (try? FileIO.read(path, limit: 256 << 10)).map { String(decoding: $0, as: UTF8.self) }
    }

    private func number(_ path: String) -> UInt64 { text(path).flatMap { UInt64($0.trimmingWhitespace) } ?? 0 }

    /// (busy, total) jiffies from /proc/stat's "cpu" line; idle and iowait are not busy.
    static func cpuTimes(_ stat: String) -> (busy: UInt64, total: UInt64)? {
        guard let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return nil }
        let values = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
        guard values.count >= 4 else { return nil }
        let total = values.prefix(8).reduce(0, +)
        let idle = values[3] + (values.count > 4 ? values[4] : 0)
        return (total - idle, total)
    }

    /// /proc/meminfo's "Name: N kB" lines in bytes.
    static func meminfo(_ text: String) -> [String: UInt64] {
        var values: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == ":" })
            guard parts.count >= 2, let n = UInt64(parts[1]) else { continue }
            values[String(parts[0])] = parts.count >= 3 && parts[2] == "kB" ? n * 1024 : n
        }
        return values
    }
}
