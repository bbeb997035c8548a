// The QEMU command line of one app instance, derived from its manifest and its
// disks and nothing else, so the same inputs always start the same machine:
//
//   qemu-system-x86_64 -name <app> -nodefaults -no-user-config -display none
//     -machine q35|pc -accel kvm | -accel tcg,tb-size=<MiB> [-cpu max under TCG]
//     -smp <cpus> -m <MiB>
//     -drive if=none,id=disk0,file=<overlay>,format=qcow2 -device virtio-blk-pci,drive=disk0,bootindex=0
//     -drive ...,file=<verified base>,readonly=on          (a `readonly` image: no overlay at all)
//     -chardev file,id=console,path=<console.log>,append=on -serial chardev:console
//     -qmp unix:<qmp.sock>,server=on,wait=off
//     [-vnc 127.0.0.1:<display>]  [network devices: `networkArguments`, the app network's taps (AppTap)]

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform
import Synchronization

/// How the guest's CPU is provided.
public enum Accelerator: Equatable, Sendable, CustomStringConvertible {
    case kvm
    /// QEMU's translator; `translationCacheMiB` bounds its code cache (QEMU's default is
    /// up to 1 GiB, allocated lazily), so the memory model can count it.
    case tcg(translationCacheMiB: Int)

    /// 32 MiB of translated code holds a boot sector or a small kernel's hot paths many times over;
    /// a full distribution boots with it too, only with more retranslation.
    public static let defaultTCG = Accelerator.tcg(translationCacheMiB: 32)

    public var description: String {
        switch self {
        case .kvm: return "kvm"
        case let .tcg(size): return "tcg (\(size) MiB translation cache)"
        }
    }
}

/// Which accelerator to use: KVM only when asked or when a probe proved it runs guests.
public enum AcceleratorPolicy: Equatable, Sendable {
    /// TCG always: the default on hosts where `/dev/kvm` opens but guests hang (this
    /// project's build machines, nested virtualisation without VMX passthrough).
    case tcg
    /// KVM always (the operator knows it works).
    case kvm
    /// KVM when `/dev/kvm` opens read-write and `KVMProbe` saw its own boot sector run
    /// under KVM with the app's CPU options; TCG otherwise.
    case probe

    /// The accelerator this policy picks on this host.
    public func choose(qemu: String, firmwareDirectory: String? = nil, scratch: String) -> Accelerator {
        switch self {
        case .tcg: return .defaultTCG
        case .kvm: return .kvm
        case .probe:
            return KVMProbe.works(qemu: qemu, firmwareDirectory: firmwareDirectory, scratch: scratch) ? .kvm : .defaultTCG
        }
    }
}

/// One disk as QEMU attaches it.
public struct AttachedDisk: Equatable, Sendable {
    public enum Bus: Equatable, Sendable {
        /// virtio-blk: every ordinary app disk.
        case virtio
        /// IDE/AHCI: `HV_LEGACY` guests without virtio drivers.
        case ide
        /// An IDE CD-ROM (`drvtype: CDROM`), always read-only.
        case cdrom
    }

    public var path: String
    public var format: BaseImage.Format
    public var readOnly: Bool
    public var bus: Bus

    public init(path: String, format: BaseImage.Format, readOnly: Bool, bus: Bus = .virtio) {
        self.path = path
        self.format = format
        self.readOnly = readOnly
        self.bus = bus
    }
}

/// The argument vector that starts one instance's QEMU.
public struct QEMUCommand: Equatable, Sendable {
    public var binary: String
    public var arguments: [String]

    /// Paths and host choices that are not in the manifest.
    public struct Host: Equatable, Sendable {
        public var qemu: String
        /// `-L`: where SeaBIOS and the option ROMs are (the slot's copy on a device); nil = QEMU's default.
        public var firmwareDirectory: String?
        /// OVMF for `HV_FML` apps; nil refuses them.
        public var uefiFirmware: String?
        public var accelerator: Accelerator
        public var consoleLog: String
        public var qmpSocket: String
        /// VNC display number (port 5900 + n) on 127.0.0.1 when the manifest enables VNC.
        public var vncDisplay: Int
        /// Network devices (`-netdev tap,... -device virtio-net-pci,...`): the instance's taps
        /// in the app network (`AppTap.qemuArguments`); empty for an app without interfaces.
        public var networkArguments: [String]

        public init(qemu: String = "/usr/bin/qemu-system-x86_64", firmwareDirectory: String? = nil, uefiFirmware: String? = nil,
                    accelerator: Accelerator = .defaultTCG, consoleLog: String, qmpSocket: String, vncDisplay: Int = 0,
                    networkArguments: [String] = []) {
            self.qemu = qemu
            self.firmwareDirectory = firmwareDirectory
            self.uefiFirmware = uefiFirmware
            self.accelerator = accelerator
            self.consoleLog = consoleLog
            self.qmpSocket = qmpSocket
            self.vncDisplay = vncDisplay
            self.networkArguments = networkArguments
        }
    }

    /// Builds the command for `manifest` with `disks` in manifest order (kernel and initrd
    /// images of an `HV_PV` app go in `kernel`/`initrd` instead).
    public init(app: String, manifest: VMManifest, disks: [AttachedDisk], kernel: String? = nil, initrd: String? = nil,
                host: Host) throws(AppsError) {
        binary = host.qemu
        var args = ["-name", app, "-nodefaults", "-no-user-config", "-display", "none"]
        if let firmware = host.firmwareDirectory { args += ["-L", firmware] }

        // q35 for everything virtio; the older i440fx `pc` for guests that only know IDE.
        args += ["-machine", manifest.mode == .legacy ? "pc" : "q35"]
        switch host.accelerator {
        case .kvm:
            args += ["-accel", "kvm", "-cpu", "host"]
        case let .tcg(size):
            // `-cpu host` needs KVM; `max` is everything TCG emulates.
            args += ["-accel", "tcg,tb-size=\(size)", "-cpu", "max"]
        }
        args += ["-smp", "\(manifest.cpus)", "-m", "\(Self.memoryMiB(manifest.memoryBytes))"]

        switch manifest.mode {
        case .hvm, .legacy: break
        case .fml:
            guard let ovmf = host.uefiFirmware else {
                throw .unsupported(app: app, reason: "vmmode HV_FML needs UEFI firmware (OVMF), and none is configured")
            }
            args += ["-bios", ovmf]
        case .pv:
            guard let kernel else { throw .unsupported(app: app, reason: "vmmode HV_PV needs an image with target Kernel") }
            args += ["-kernel", kernel]
            if let initrd { args += ["-initrd", initrd] }
        }

        for (index, disk) in disks.enumerated() {
            let id = "disk\(index)"
            var drive = "if=none,id=\(id),file=\(Self.escape(disk.path)),format=\(disk.format.rawValue)"
            if disk.readOnly || disk.bus == .cdrom { drive += ",readonly=on" }
            if disk.bus == .cdrom { drive += ",media=cdrom" }
            args += ["-drive", drive]
            let boot = index == 0 && manifest.mode != .pv ? ",bootindex=0" : ""
            switch disk.bus {
            case .virtio: args += ["-device", "virtio-blk-pci,drive=\(id)\(boot)"]
            case .ide: args += ["-device", "ide-hd,drive=\(id)\(boot)"]
            case .cdrom: args += ["-device", "ide-cd,drive=\(id)\(boot)"]
            }
        }

        args += ["-chardev", "file,id=console,path=\(Self.escape(host.consoleLog)),append=on", "-serial", "chardev:console"]
        args += ["-qmp", "unix:\(Self.escape(host.qmpSocket)),server=on,wait=off"]
        // Loopback only: reaching it from off the device takes an explicit forward.
        if manifest.enableVNC { args += ["-vnc", "127.0.0.1:\(host.vncDisplay)"] }
        args += host.networkArguments
        arguments = args
    }

    /// QEMU takes whole MiB; a manifest in KiB rounds up so the guest never gets less than asked.
    public static func memoryMiB(_ bytes: UInt64) -> UInt64 { (bytes + (1 << 20) - 1) >> 20 }

    /// QEMU's option syntax splits on commas; a literal comma in a path is doubled.
    static func escape(_ path: String) -> String { String(path.flatMap { $0 == "," ? [",", ","] : [$0] }) }
}

/// Whether KVM runs guests here. `/dev/kvm` opening is not enough: under nested
/// virtualisation without working VMX (this project's build hosts) QEMU either aborts
/// setting MSRs with `-cpu host` or, with other CPU models, runs SeaBIOS and then hangs
/// before the boot sector. So the probe boots a guest of its own, with the same
/// `-accel kvm -cpu host` an app gets, and waits for the guest's first instruction to
/// show: a nine-byte boot sector writes "K" to SeaBIOS's debug console (port 0x402),
/// right after the firmware's "Booting from 0000:7c00".
public enum KVMProbe {
    public static let marker = "Booting from 0000:7c00\nK"

    /// The probe guest, byte by byte (16-bit real mode at 0x7c00):
    ///   ba 02 04   mov dx, 0x402
    ///   b0 4b      mov al, 'K'
    ///   ee         out dx, al
    ///   f4         hlt
    ///   eb fd      jmp back to hlt
    static let bootSector: [UInt8] = [0xba, 0x02, 0x04, 0xb0, 0x4b, 0xee, 0xf4, 0xeb, 0xfd]

    public static func works(qemu: String, firmwareDirectory: String?, scratch: String,
                             timeout: Duration = .seconds(5), reaper: Reaper = .shared) -> Bool {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        _ = close(fd)
        return guestRuns(qemu: qemu, firmwareDirectory: firmwareDirectory, scratch: scratch,
                         accelerator: ["-accel", "kvm", "-cpu", "host"], timeout: timeout, reaper: reaper)
    }

    /// Boots the probe guest with `accelerator` options; true once it wrote its marker.
    static func guestRuns(qemu: String, firmwareDirectory: String?, scratch: String, accelerator: [String],
                          timeout: Duration, reaper: Reaper) -> Bool {
        let log = scratch + "/kvm-probe.log"
        let disk = scratch + "/kvm-probe.raw"
        _ = unlink(log)
        // SeaBIOS does not boot a virtio disk smaller than a few sectors; 1 MiB like the test app.
        var image = bootSector + [UInt8](repeating: 0, count: 510 - bootSector.count) + [0x55, 0xaa]
        image += [UInt8](repeating: 0, count: (1 << 20) - image.count)
        guard (try? FileIO.writeAtomically(image, to: disk)) != nil else { return false }
        defer {
            _ = unlink(log)
            _ = unlink(disk)
        }
        var args = ["-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35"] + accelerator + [
                    "-m", "16", "-drive", "if=none,id=probe,file=\(QEMUCommand.escape(disk)),format=raw,readonly=on",
                    "-device", "virtio-blk-pci,drive=probe,bootindex=0",
                    "-chardev", "file,id=debug,path=\(QEMUCommand.escape(log))", "-device", "isa-debugcon,iobase=0x402,chardev=debug"]
        if let firmwareDirectory { args += ["-L", firmwareDirectory] }
        let ended = Mutex(false)
        guard let pid = try? reaper.spawn(qemu, args, onExit: { _ in ended.withLock { $0 = true } }) else { return false }
        let deadline = Deadline(after: timeout)
        var seen = false
        while !deadline.hasPassed {
            reaper.reapAll()
            if let text = try? FileIO.read(log, limit: 64 << 10), String(decoding: text, as: UTF8.self).contains(marker) {
                seen = true
                break
            }
            if ended.withLock({ $0 }) { break }
            MonotonicClock.sleep(for: .milliseconds(50))
        }
        // The pid is ours until the reaper delivers its exit.
        if !ended.withLock({ $0 }) { _ = kill(pid, SIGKILL) }
        let reaped = Deadline(after: .seconds(5))
        while !ended.withLock({ $0 }) && !reaped.hasPassed {
            reaper.reapAll()
            MonotonicClock.sleep(for: .milliseconds(10))
        }
        return seen
    }
}
