// Reads and writes the reboot-reason records under /persist/status/ (see
// RebootReason.swift for what each means). Every write goes to a temporary
// name, is fsynced, renamed over the old file, and the directory fsynced, so
// a power cut leaves either the old or the new record, never half of one.
// Each record carries the kernel's boot_id, so a record a power cut left
// behind is never mistaken for one of the boot that followed.

#if canImport(Glibc)
import Glibc
#endif
import OutpostShims
import OutpostPlatform
import OutpostEarlyBoot

/// The reboot-reason records of one PERSIST mount.
public struct BootHistory: Sendable {
    public let directory: String
    public let bootID: String

    public init(persistMount: String) {
        directory = persistMount + "/status"
        bootID = ((try? Sys.readText("/proc/sys/kernel/random/boot_id")) ?? "unknown").replacingNewlines()
            .trimmingSpaces()
    }

    var sessionPath: String { directory + "/session" }
    var shutdownPath: String { directory + "/shutdown" }
    var watchdogPath: String { directory + "/watchdog" }
    var heartbeatPath: String { directory + "/heartbeat" }
    var lastBootPath: String { directory + "/last-boot" }
    var historyPath: String { directory + "/reboot-history" }
    public var lastStatusPath: String { directory + "/last-status.json" }

    /// Collects the previous boot's records (those of its boot_id only).
    public func gatherEvidence(watchdogCardReset: Bool) -> PreviousBootEvidence {
        let session = read(sessionPath)
        let previousID = session?["boot-id"]
        func sameBoot(_ record: StatusRecord?) -> StatusRecord? {
            guard let record, let previousID else { return record }
            return record["boot-id"] == previousID ? record : nil
        }
        return PreviousBootEvidence(session: session, shutdown: sameBoot(read(shutdownPath)),
                                    watchdogRecord: sameBoot(read(watchdogPath)),
                                    heartbeat: sameBoot(read(heartbeatPath)),
                                    watchdogCardReset: watchdogCardReset, panicRecord: Pstore.panicRecord())
    }

    /// Records `lastBoot` (last-boot, reboot-history) and opens this boot's
    /// session. Returns warnings to print; a failure here must not stop the boot.
    public func beginSession(lastBoot: LastBoot, slot: String, version: String) -> [String] {
        var warnings: [String] = []
        do {
            try Sys.mkdir(directory)
            try writeAtomically(lastBootPath, lastBoot.record.text)
            try appendHistory(lastBoot)
            try writeAtomically(sessionPath, StatusRecord([
                ("boot-id", bootID), ("slot", slot), ("version", version), ("time", String(wallClockSeconds())),
            ]).text)
        } catch {
            warnings.append("cannot record the boot reason in \(directory): \(error)")
        }
        Pstore.clear()
        return warnings
    }

    /// Written at the start of an orderly stop, before anything can hang.
    public func recordShutdown(_ request: ShutdownRequest) throws(SystemError) {
        var fields = [("boot-id", bootID), ("reason", request.reason.rawValue), ("time", String(wallClockSeconds()))]
        if let component = request.component { fields.append(("component", component)) }
        if let expected = request.expectedSlot { fields.append(("expected-slot", expected)) }
        if let detail = request.detail { fields.append(("detail", detail)) }
        try writeAtomically(shutdownPath, StatusRecord(fields).text)
    }

    /// Written by the watchdog feeder just before it stops feeding on purpose.
    public func recordWatchdogStop(component: String, detail: String) throws(SystemError) {
        try writeAtomically(watchdogPath, StatusRecord([
            ("boot-id", bootID), ("component", component), ("time", String(wallClockSeconds())), ("detail", detail),
        ]).text)
    }

    /// Proves PERSIST takes writes and marks the last time the system was alive.
    public func writeHeartbeat() throws(SystemError) {
        try writeAtomically(heartbeatPath, StatusRecord([("boot-id", bootID), ("time", String(wallClockSeconds()))]).text)
    }

    public func readLastBoot() -> LastBoot? {
        guard let record = read(lastBootPath), let word = record["reason"],
              let reason = RebootReason(rawValue: word) else { return nil }
        return LastBoot(reason: reason, component: record["component"], time: record["time"].flatMap { Int64($0) },
                        detail: record["detail"])
    }

    func read(_ path: String) -> StatusRecord? {
        guard let text = try? Sys.readText(path) else { return nil }
        return StatusRecord(text: text)
    }

    /// Keeps the last 100 reasons, newest last, one record per line.
    func appendHistory(_ lastBoot: LastBoot) throws(SystemError) {
        let old = (try? Sys.readText(historyPath)) ?? ""
        var lines = old.split(separator: "\n").map(String.init)
        let line = lastBoot.record.fields.map { "\($0.0)=\($0.1.replacingNewlines().replacingSpaces())" }
            .joined(separator: " ")
        lines.append("boot-id=\(bootID) " + line)
        try writeAtomically(historyPath, lines.suffix(100).joined(separator: "\n") + "\n")
    }

    /// Replaces a status file so a power cut leaves the old or the new text (OutpostPlatform's atomic write).
    public func writeAtomically(_ path: String, _ text: String) throws(SystemError) {
        try FileIO.writeAtomically(Array(text.utf8), to: path, mode: 0o644)
    }
}

extension String {
    func replacingSpaces() -> String { String(map { $0 == " " ? "_" : $0 }) }
}

/// The kernel's persistent store (EFI variables under OVMF and most UEFI
/// boards): after a panic it holds the dmesg tail, which is the only way to
/// tell a panic from a power cut once the machine has restarted.
enum Pstore {
    static let mount = "/sys/fs/pstore"

    static func ensureMounted() {
        var type: Int64 = 0
        // PSTOREFS_MAGIC: already mounted (mounting twice fails with EBUSY anyway).
        if OutpostShims_statfs_type(mount, &type) == 0, type == 0x6165_676C { return }
        try? Sys.mount(source: "pstore", target: mount, type: "pstore", flags: UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC))
    }

    /// The first dmesg record that says the kernel panicked, if any.
    static func panicRecord() -> (name: String, time: Int64?)? {
        ensureMounted()
        guard let names = try? Sys.listDirectory(mount) else { return nil }
        for name in names where name.hasPrefix("dmesg-") {
            let path = mount + "/" + name
            // Searched in the UTF-8 view: String.contains would bind to full Foundation's
            // overload when a dependency makes it visible, linking ICU (~47 MB) into outpostd.
            guard let text = try? Sys.readText(path),
                  text.utf8.firstRange(of: "Kernel panic".utf8) != nil || text.utf8.firstRange(of: "Panic#".utf8) != nil else {
                continue
            }
            var info = stat()
            let time: Int64? = stat(path, &info) == 0 ? Int64(info.st_mtim.tv_sec) : nil
            return (name, time)
        }
        return nil
    }

    /// Deletes the records once reported: on EFI they use scarce NVRAM.
    static func clear() {
        guard let names = try? Sys.listDirectory(mount) else { return }
        for name in names where name.hasPrefix("dmesg-") { _ = unlink(mount + "/" + name) }
    }
}

