// outpostd's own footprint (RSS, threads, CPU) and the process table's
// health (zombies), read from /proc for the status report and the bench.

#if canImport(Glibc)
import Glibc
import OutpostEarlyBoot
#endif

/// Figures about outpostd itself and the process table, from /proc.
public enum ProcessStats {
    public struct Sample: Sendable {
        public var pid: Int32
        public var rssKiB: Int64?
        /// VmRSS split: anonymous memory (heap, stacks), file pages (the binary's code and data
        /// from the root) and shared memory (files in RAM: an initramfs binary is counted here).
        public var rssAnonKiB: Int64?
        public var rssFileKiB: Int64?
        public var rssShmemKiB: Int64?
        public var threads: Int64?
        public var cpuTicks: Int64?
        public var zombies: Int

        public init(pid: Int32, rssKiB: Int64?, rssAnonKiB: Int64? = nil, rssFileKiB: Int64? = nil,
                    rssShmemKiB: Int64? = nil, threads: Int64?, cpuTicks: Int64?, zombies: Int) {
            self.pid = pid
            self.rssKiB = rssKiB
            self.rssAnonKiB = rssAnonKiB
            self.rssFileKiB = rssFileKiB
            self.rssShmemKiB = rssShmemKiB
            self.threads = threads
            self.cpuTicks = cpuTicks
            self.zombies = zombies
        }
    }

    static func sample() -> Sample {
        let status = (try? Sys.readText("/proc/self/status")) ?? ""
        func field(_ name: String) -> Int64? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
            return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { Int64($0) }
        }
        return Sample(pid: getpid(), rssKiB: field("VmRSS"), rssAnonKiB: field("RssAnon"), rssFileKiB: field("RssFile"),
                      rssShmemKiB: field("RssShmem"),
                      threads: field("Threads"), cpuTicks: cpuTicks(), zombies: zombieCount())
    }

    /// utime + stime of this process in clock ticks (fields 14 and 15 of
    /// /proc/self/stat, counted after the parenthesised command name).
    static func cpuTicks() -> Int64? {
        guard let text = try? Sys.readText("/proc/self/stat") else { return nil }
        return statFields(text).flatMap { fields in
            fields.count > 12 ? (Int64(fields[11]) ?? 0) + (Int64(fields[12]) ?? 0) : nil
        }
    }

    /// utime + stime of each of this process's threads, summed by thread name
    /// (the kernel's comm: NamedThread's names, "outpostd" for unnamed ones).
    static func threadTicks() -> [String: Int64] {
        var byName: [String: Int64] = [:]
        for tid in (try? Sys.listDirectory("/proc/self/task")) ?? [] {
            guard let text = try? Sys.readText("/proc/self/task/\(tid)/stat"),
                  let (name, ticks) = threadNameAndTicks(statText: text) else { continue }
            byName[name, default: 0] += ticks
        }
        return byName
    }

    /// The comm between the first "(" and the last ")" and utime + stime of one stat line.
    static func threadNameAndTicks(statText text: String) -> (String, Int64)? {
        guard let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")"), open < close,
              let fields = statFields(text), fields.count > 12,
              let user = Int64(fields[11]), let system = Int64(fields[12]) else { return nil }
        return (String(text[text.index(after: open)..<close]), user + system)
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
