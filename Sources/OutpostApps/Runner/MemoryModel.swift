// How much memory one app's QEMU may use, whether the host can give it, and
// the cgroup v2 files that hold it to that.
//
// The seed system guessed a fixed 350 MiB + 2.5 % + 20 MiB + 3 MiB per vCPU
// and its users still met the OOM killer. Here the overhead is what QEMU
// itself uses beside the guest's RAM, measured (MemoryModelTests prints it):
//
//   limit = app memory
//         + 64 MiB            QEMU's own RSS: binary, libraries, SeaBIOS and option ROMs,
//                             device models, block and chardev buffers, QMP
//         + translation cache  under TCG only: -accel tcg,tb-size bounds it (32 MiB default)
//         + 8 MiB per vCPU     each vCPU thread's stack and TCG's per-CPU softmmu TLB
//         + app memory / 64    page tables, dirty and RAM-block bitmaps grow with the guest
//
// Measured on the build host (QEMU 7.2, TCG, tb-size 32 MiB, q35, the boot-sector
// app, VmRSS from /proc/PID/status a second after its first console line):
//   -m 64, 1 vCPU: 44.7 MiB   -m 512, 1 vCPU: 45.1 MiB   -m 2048, 2 vCPUs: 44.6 MiB
// (and 45 MiB with qemu-system-x86_64 started by hand, -m 64/512/2048).
// The boot sector touches almost none of its RAM, so these figures are QEMU's own
// overhead; the model keeps 64 MiB + 8 MiB per vCPU (72+ MiB at 1 vCPU) above the
// 45 MiB seen, and the guest's RAM is counted in full because a guest that uses
// it all must not meet the OOM killer either.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform
import Synchronization

/// The memory limit of one app instance.
public enum MemoryModel {
    public static let fixedOverhead: UInt64 = 64 << 20
    public static let perCPUOverhead: UInt64 = 8 << 20
    /// One part in 64 of the guest's RAM.
    public static let guestShift: UInt64 = 6

    /// What QEMU uses beside the guest's RAM.
    public static func overhead(memoryBytes: UInt64, cpus: Int, accelerator: Accelerator) -> UInt64 {
        var bytes = fixedOverhead + UInt64(max(1, cpus)) * perCPUOverhead + (memoryBytes >> guestShift)
        if case let .tcg(size) = accelerator { bytes += UInt64(max(0, size)) << 20 }
        return bytes
    }

    /// The cgroup's memory.max: the guest's RAM (rounded up to the MiB QEMU is given) plus the overhead.
    public static func limit(memoryBytes: UInt64, cpus: Int, accelerator: Accelerator) -> UInt64 {
        (QEMUCommand.memoryMiB(memoryBytes) << 20) + overhead(memoryBytes: memoryBytes, cpus: cpus, accelerator: accelerator)
    }

    /// MemAvailable from /proc/meminfo, in bytes: what the kernel could hand out without swapping.
    public static func memAvailable(meminfo: String = "/proc/meminfo") throws(AppsError) -> UInt64 {
        let bytes: [UInt8]
        do { bytes = try FileIO.read(meminfo, limit: 64 << 10) } catch { throw .system(error) }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kib = UInt64(fields[1]) { return kib * 1024 }
        }
        throw .invalid(field: meminfo, reason: "has no MemAvailable line")
    }
}

/// Admission control: an instance starts only when its whole limit fits, counted against
/// MemAvailable less a reserve for the agent and the kernel, less the limits of the
/// instances already admitted. Running instances' RSS is already missing from MemAvailable,
/// so counting their full limits again is deliberately conservative: a guest may grow to its
/// limit later, and that memory must still be there.
public final class MemoryAdmission: Sendable {
    public let reserve: UInt64
    private let available: @Sendable () throws(AppsError) -> UInt64
    private let admitted = Mutex<[String: UInt64]>([:])

    public init(reserve: UInt64 = 128 << 20,
                available: @escaping @Sendable () throws(AppsError) -> UInt64 = { () throws(AppsError) in try MemoryModel.memAvailable() }) {
        self.reserve = reserve
        self.available = available
    }

    /// Records `limit` for `app`, or throws the numbers when it does not fit. An app already
    /// admitted (a restart) is checked with its old limit given back first.
    public func admit(app: String, limit: UInt64) throws(AppsError) {
        let free = try available()
        try admitted.withLock { (admitted: inout [String: UInt64]) throws(AppsError) in
            let committed = admitted.filter { $0.key != app }.values.reduce(0, +)
            guard free >= reserve + committed, free - reserve - committed >= limit else {
                throw .memoryDoesNotFit(app: app, limit: limit, available: free, reserve: reserve, committed: committed)
            }
            admitted[app] = limit
        }
    }

    /// Gives an instance's limit back once its QEMU has ended for good.
    public func release(app: String) { _ = admitted.withLock { $0.removeValue(forKey: app) } }

    /// The limits admitted now, for status.
    public var committed: [String: UInt64] { admitted.withLock { $0 } }
}

/// The cgroup v2 limits of one instance's QEMU.
public struct CgroupLimits: Equatable, Sendable {
    /// `cpu.max`: "<quota> <period>", 100 ms of CPU per vCPU per 100 ms period.
    public var cpuMax: String
    /// `memory.max` in bytes.
    public var memoryMax: UInt64

    public static let period = 100_000

    public init(cpus: Int, memoryLimit: UInt64) {
        cpuMax = "\(max(1, cpus) * Self.period) \(Self.period)"
        memoryMax = memoryLimit
    }

    /// Writes the limits into `directory` (an instance's cgroup, created by the caller under a
    /// parent whose cgroup.subtree_control enables cpu and memory). Files are opened without
    /// O_CREAT in a real cgroup; `create` is for a plain directory standing in for one.
    public func apply(to directory: String, create: Bool = false) throws(AppsError) {
        try Self.write("\(cpuMax)\n", to: directory + "/cpu.max", create: create)
        try Self.write("\(memoryMax)\n", to: directory + "/memory.max", create: create)
    }

    /// Moves `pid` into the cgroup. QEMU joins right after it starts, before it has mapped
    /// the guest's RAM (which it faults in lazily), so nearly all its memory is charged here.
    public static func addProcess(_ pid: pid_t, to directory: String, create: Bool = false) throws(AppsError) {
        try write("\(pid)\n", to: directory + "/cgroup.procs", create: create)
    }

    static func write(_ text: String, to path: String, create: Bool) throws(AppsError) {
        do {
            let flags = O_WRONLY | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0)
            let fd = try systemCall("open", path) { open(path, flags, 0o644) }
            defer { _ = close(fd) }
            try FileIO.writeAll(fd, Array(text.utf8), object: path)
        } catch {
            throw .system(error)
        }
    }
}
