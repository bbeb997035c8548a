// outpostd's first stage, run as /init from the initramfs (docs/boot.md):
//
//   mount /proc /sys /dev → start loading modules (two threads) → parse
//   outpost.* → find the slot by PARTUUID → dm-linear + dm-verity → read every
//   root block → the last modules → mount the root → switch root → CONFIG
//   (ro), PERSIST (rw, created on first boot) → "outpost: ready slot=IMGA
//   version=X" → PID 1 loop.
//
// Any failure prints one "outpost: error: ..." line and reboots after a short
// delay, so that an unattended device never hangs silently and GRUB's
// fallback (a slot with no tries left) gets its chance.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// Why early boot could not bring the system up. Each description is the
/// rest of the console line after "outpost: error: ".
public enum EarlyBootError: Error, CustomStringConvertible {
    case apiFilesystems(SystemError)
    case commandLineUnreadable(SystemError)
    case commandLine(BootParameterError)
    case slotNotFound(partUUID: String, waitedMilliseconds: Int64, disks: [String])
    case rootOutsideSlot(slot: String, device: String, needed: UInt64, size: UInt64)
    case veritySetup(slot: String, device: String, SystemError)
    case verityCorrupt(slot: String, device: String, rootOffset: UInt64, errno: Int32)
    case rootMount(slot: String, device: String, SystemError)
    case switchRoot(SystemError)
    case persistMissing(disk: String)
    case persist(DataPartitionError)

    public var description: String {
        switch self {
        case .apiFilesystems(let error):
            return "cannot mount the kernel filesystems: \(error)"
        case .commandLineUnreadable(let error):
            return "cannot read the kernel command line: \(error)"
        case .commandLine(let error):
            return "\(error)"
        case .slotNotFound(let partUUID, let waited, let disks):
            let seen = disks.isEmpty ? "no GPT disks" : "GPT disks: " + disks.joined(separator: ", ")
            return "slot partition PARTUUID=\(partUUID) not found after \(waited / 1000) s (\(seen))"
        case .rootOutsideSlot(let slot, let device, let needed, let size):
            return "slot \(slot) (\(device)) is \(size) bytes but the root and hash tree need more than \(needed)"
        case .veritySetup(let slot, let device, let error):
            return "dm-verity setup for slot \(slot) (\(device)) failed: \(error)"
        case .verityCorrupt(let slot, let device, let offset, let code):
            return "verity: root of slot \(slot) (\(device)) failed verification at root byte \(offset): \(Errno(rawValue: code)) (errno \(code))"
        case .rootMount(let slot, let device, let error):
            return "verity: cannot mount the root of slot \(slot) (\(device)): \(error)"
        case .switchRoot(let error):
            return "switch root failed: \(error)"
        case .persistMissing(let disk):
            return "no PERSIST partition (type \(PartitionType.persist)) on \(disk)"
        case .persist(let error):
            return "\(error)"
        }
    }
}

/// What early boot established, for the ready line and the later stages.
public struct BootOutcome: Sendable {
    public init(slotName: String, version: String, rescueReason: String?, persistMounted: Bool, diskPath: String = "",
                slotPartUUID: String = "", clock: StepClock = StepClock(enabled: false)) {
        self.slotName = slotName
        self.version = version
        self.rescueReason = rescueReason
        self.persistMounted = persistMounted
        self.diskPath = diskPath
        self.slotPartUUID = slotPartUUID
        self.clock = clock
    }

    public var slotName: String
    public var version: String
    public var rescueReason: String?
    public var persistMounted: Bool
    /// The whole disk holding the slot (/dev/vda) and the slot's PARTUUID:
    /// what the update engine needs to find both slots.
    public var diskPath: String = ""
    public var slotPartUUID: String = ""
    /// Early boot's steps so far; InitProcess adds its own before the ready line.
    public var clock = StepClock(enabled: false)
}

public enum EarlyBoot {
    static let newRoot = "/newroot"
    /// How long to wait for the slot's disk to appear after its driver loaded.
    static let deviceTimeoutMilliseconds: Int64 = 15_000
    /// Pause before rebooting after an error, so the line can be read and a
    /// broken slot does not spin the CPU in a tight reboot loop.
    static let errorRebootDelayMilliseconds = 5_000

    /// The whole first stage as PID 1: bring the system up, then exec the verified
    /// root's outpostd (StageHandoff.swift). `ifExecFails` gets the outcome when the exec
    /// cannot happen: outpostd as /init goes on itself, outpost-init ends the boot. Never returns.
    public static func runAsInit(ifExecFails: (BootOutcome, String) -> Never) -> Never {
        var persistMounted = false
        do {
            let outcome = try bringUp(persistMounted: &persistMounted)
            let failure = StageHandoff.execAgentFromRoot(outcome)
            ifExecFails(outcome, failure)
        } catch {
            fail("\(error)", persistMounted: persistMounted)
        }
    }

    /// One `outpost: error:` line, a pause to read it, and a reboot (GRUB's fallback gets its chance).
    public static func fail(_ message: String, persistMounted: Bool = true) -> Never {
        Console.attachIfNeeded()
        Console.line("error: \(message)")
        Console.line("rebooting in \(errorRebootDelayMilliseconds / 1000) s")
        MonotonicClock.sleep(for: .milliseconds(errorRebootDelayMilliseconds))
        PID1.shutdown(persistMount: persistMounted ? DataPartitions.persistMount : nil, powerOff: false)
    }

    static func bringUp(persistMounted: inout Bool) throws(EarlyBootError) -> BootOutcome {
        let started = MonotonicClock.now().milliseconds
        do { try SwitchRoot.mountAPIFilesystems() } catch { throw .apiFilesystems(error) }
        Console.attachIfNeeded()

        let commandLine: String
        do { commandLine = try Sys.readText("/proc/cmdline") } catch { throw .commandLineUnreadable(error) }
        let debug = commandLine.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("outpost.debug")
        var clock = StepClock(enabled: debug, now: started)

        // The modules load in the background (KernelModules.swift); each step below waits
        // only for what it needs, and the boot line's "modules" is the wait left after verity.
        let each: @Sendable (String, Int64) -> Void = { path, ms in
            if debug { Console.line("debug: module \(KernelModules.name(ofPath: path)): \(ms) ms") }
        }
        let modules = ModuleLoading((try? Sys.readText(KernelModules.defaultListPath)).map(KernelModules.parseList) ?? [],
                                    loaded: each)

        let parameters: BootParameters
        do { parameters = try BootParameters(commandLine: commandLine) } catch { throw .commandLine(error) }

        guard let (disk, slot) = BlockDevices.waitForPartition(partUUID: parameters.slotPartUUID,
                                                               timeoutMilliseconds: deviceTimeoutMilliseconds) else {
            let disks = BlockDevices.scanDisks().map { disk in
                "\(disk.devicePath) [" + disk.partitions.map { "\($0.number):\($0.name)=\($0.partUUID)" }
                    .joined(separator: " ") + "]"
            }
            throw .slotNotFound(partUUID: parameters.slotPartUUID, waitedMilliseconds: deviceTimeoutMilliseconds,
                                disks: disks)
        }
        let slotName = slot.name.isEmpty ? "partition\(slot.number)" : slot.name
        clock.mark("slot", detail: slot.devicePath)

        let slotBytes = slot.sectorCount * 512
        let rootEnd = parameters.rootOffset + parameters.rootBlocks * BootParameters.blockSize
        guard rootEnd <= slotBytes, parameters.hashOffset < slotBytes else {
            throw .rootOutsideSlot(slot: slotName, device: slot.devicePath,
                                   needed: max(rootEnd, parameters.hashOffset), size: slotBytes)
        }

        modules.waitFor(VerityRoot.modules)
        let root: VerityDevice
        do { root = try VerityRoot.setUp(slot: slot, parameters: parameters) } catch {
            throw .veritySetup(slot: slotName, device: slot.devicePath, error)
        }
        do { try VerityRoot.verifyAllBlocks(root) } catch {
            throw .verityCorrupt(slot: slotName, device: slot.devicePath, rootOffset: error.offset, errno: error.errno)
        }
        clock.mark("verity", detail: "\(root.sizeBytes) bytes read")
        // All of them before the initramfs goes (switch root deletes its files).
        for failure in modules.finish() {
            Console.line("warning: module not loaded: \(failure.error)")
        }
        clock.mark("modules")

        do {
            try Sys.mkdir(newRoot)
            try Sys.mount(source: root.path, target: newRoot, type: "squashfs", flags: UInt(MS_RDONLY))
        } catch {
            throw .rootMount(slot: slotName, device: slot.devicePath, error)
        }
        do { try SwitchRoot.switchRoot(to: newRoot) } catch { throw .switchRoot(error) }
        // /run is the one writable scratch place of the read-only root.
        try? Sys.mount(source: "tmpfs", target: "/run", type: "tmpfs",
                       flags: UInt(MS_NOSUID | MS_NODEV), data: "mode=0755")
        clock.mark("root")

        if let config = DataPartitions.config(on: disk) {
            do { try DataPartitions.mountConfig(config) } catch {
                // A device without CONFIG can still take a local update; keep it up.
                Console.line("warning: \(error)")
            }
        } else {
            Console.line("warning: no CONFIG partition on \(disk.devicePath)")
        }

        guard let persist = DataPartitions.persist(on: disk) else { throw .persistMissing(disk: disk.devicePath) }
        do {
            for warning in try DataPartitions.preparePersist(persist, disk: disk) {
                Console.line("warning: \(warning)")
            }
        } catch {
            throw .persist(error)
        }
        persistMounted = true
        clock.mark("persist")

        // The boot record (/persist/status/boot.json) is outpostd's to write (InitProcess).
        let version = (try? Sys.readText(OutpostRelease.path)).flatMap(OutpostRelease.version(fromFileText:))
        return BootOutcome(slotName: slotName, version: version ?? "unknown",
                           rescueReason: parameters.rescueReason, persistMounted: true,
                           diskPath: disk.devicePath, slotPartUUID: slot.partUUID, clock: clock)
    }
}

/// Where a boot's time went, step by step, from the kernel's start (CLOCK_MONOTONIC
/// starts with the kernel): printed as one `boot:` line after the ready line, and
/// per step as it happens when the command line has `outpost.debug`.
public struct StepClock: Sendable {
    public struct Step: Equatable, Sendable {
        public var name: String
        public var milliseconds: Int64
    }
    public var enabled: Bool
    /// When init (this process) started, in milliseconds since the kernel started.
    public private(set) var start: Int64
    public private(set) var steps: [Step] = []
    private var last: Int64

    public init(enabled: Bool, now: Int64 = MonotonicClock.now().milliseconds) {
        self.enabled = enabled
        start = now
        last = now
    }

    /// A clock another process of this boot kept (StageHandoff).
    init(enabled: Bool, start: Int64, steps: [Step], last: Int64) {
        self.enabled = enabled
        self.start = start
        self.steps = steps
        self.last = last
    }

    /// When the last step ended, in milliseconds since the kernel started.
    var lastMark: Int64 { last }

    /// Ends the step `step` now; `detail` is shown in the debug line only.
    public mutating func mark(_ step: String, detail: String = "", now: Int64 = MonotonicClock.now().milliseconds) {
        steps.append(Step(name: step, milliseconds: now - last))
        if enabled {
            Console.line("debug: \(step)\(detail.isEmpty ? "" : " " + detail): +\(now - last) ms (\(now) ms since boot)")
        }
        last = now
    }

    /// "boot: kernel 2.91 s, modules 0.21 s, …; ready 6.02 s after the kernel started".
    public var summary: String {
        func seconds(_ ms: Int64) -> String {
            let hundredths = (ms + 5) / 10
            return "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100) s"
        }
        let parts = [("kernel", start)] + steps.map { ($0.name, $0.milliseconds) }
        return "boot: " + parts.map { "\($0.0) \(seconds($0.1))" }.joined(separator: ", ")
            + "; ready \(seconds(last)) after the kernel started"
    }
}
