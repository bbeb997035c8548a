// Early boot runs from the initramfs, which lives in RAM: as long as PID 1 is
// the initramfs copy of outpostd, that 25 MB binary and the libraries it maps
// stay pinned in memory for the device's whole life, although switch root has
// deleted their files. So once the verified root is mounted, early boot execs
// /sbin/outpostd from that root (dm-verity checked, page cache the kernel can
// reclaim) as PID 1, handing over what it established in one file on /run:
//
//   initramfs outpostd (PID 1): bringUp → /run/outpost-early-boot.json → execv
//   /sbin/outpostd (PID 1):     read + delete the file → InitProcess.run
//
// /run is the tmpfs early boot mounted itself just before; the initramfs has an
// empty /run, so a first stage never finds a handoff. If the exec cannot happen,
// early boot's own process goes on as before, with one warning.

#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import OutpostPlatform

struct StageHandoff: Codable, Sendable {
    static let path = "/run/outpost-early-boot.json"
    static let agentPath = "/sbin/outpostd"

    var slotName: String
    var version: String
    var rescueReason: String?
    var persistMounted: Bool
    var diskPath: String
    var slotPartUUID: String
    var clock: StepClock
    /// Lines printed before any controller client existed, still owed to its log.
    var consoleLines: [Console.Line]
    var consoleDropped: Int

    init(_ outcome: BootOutcome, console: (lines: [Console.Line], dropped: Int)) {
        slotName = outcome.slotName
        version = outcome.version
        rescueReason = outcome.rescueReason
        persistMounted = outcome.persistMounted
        diskPath = outcome.diskPath
        slotPartUUID = outcome.slotPartUUID
        clock = outcome.clock
        consoleLines = console.lines
        consoleDropped = console.dropped
    }

    var outcome: BootOutcome {
        BootOutcome(slotName: slotName, version: version, rescueReason: rescueReason, persistMounted: persistMounted,
                    diskPath: diskPath, slotPartUUID: slotPartUUID, clock: clock)
    }

    func encoded() throws -> [UInt8] { Array(try JSONEncoder().encode(self)) }

    static func decode(_ bytes: [UInt8]) throws -> StageHandoff { try JSONDecoder().decode(StageHandoff.self, from: Data(bytes)) }

    /// Execs the root's outpostd as PID 1 with the handoff written. Returns only when that is
    /// impossible (no such binary, /run not writable, execv refused): early boot goes on itself.
    static func execAgentFromRoot(_ outcome: BootOutcome) {
        guard Sys.exists(agentPath) else {
            Console.line("warning: no \(agentPath) in the root: the initramfs copy of outpostd stays PID 1")
            return
        }
        let handoff = StageHandoff(outcome, console: Console.buffered())
        do {
            try FileIO.writeAtomically(try handoff.encoded(), to: path, mode: 0o600)
        } catch {
            Console.line("warning: cannot write \(path): \(error); the initramfs copy of outpostd stays PID 1")
            return
        }
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("outpostd"), nil]
        execv(agentPath, argv)
        let error = SystemError.current("execv", agentPath)
        argv.forEach { free($0) }
        _ = unlink(path)
        Console.line("warning: \(error); the initramfs copy of outpostd stays PID 1")
    }

    /// In PID 1: the handoff early boot left, read and deleted, with the console's owed lines
    /// restored and the exec's time marked; nil when there is none (this is early boot).
    /// A handoff that cannot be read ends the boot with one error line and a reboot.
    static func resume() -> BootOutcome? {
        let bytes: [UInt8]?
        do { bytes = try FileIO.readIfPresent(path, limit: 4 << 20) } catch {
            EarlyBoot.fail("cannot read \(path): \(error)")
        }
        guard let bytes else { return nil }
        _ = unlink(path)
        let handoff: StageHandoff
        do { handoff = try decode(bytes) } catch {
            EarlyBoot.fail("\(path) is not early boot's handoff: \(error)")
        }
        Console.restoreBuffered(lines: handoff.consoleLines, dropped: handoff.consoleDropped)
        var outcome = handoff.outcome
        outcome.clock.mark("exec")
        return outcome
    }
}
