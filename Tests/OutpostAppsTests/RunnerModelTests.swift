import Foundation
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostApps

@Suite("QEMU command lines, the memory model and cgroup files")
struct RunnerModelTests {
    func host(_ accelerator: Accelerator = .defaultTCG) -> QEMUCommand.Host {
        QEMUCommand.Host(accelerator: accelerator, consoleLog: "/persist/apps/a/console.log", qmpSocket: "/persist/apps/a/qmp.sock",
                         vncDisplay: 3)
    }

    @Test func anHVMAppUnderTCGGetsQ35VirtioDisksAndNoKVMOptions() throws {
        let manifest = try BootCounter.manifest(memoryKiB: 512000, cpus: 2)
        let disks = [AttachedDisk(path: "/persist/apps/a/disk0.qcow2", format: .qcow2, readOnly: false),
                     AttachedDisk(path: "/persist/store/verified/ab,c", format: .raw, readOnly: true)]
        let command = try QEMUCommand(app: "a", manifest: manifest, disks: disks, host: host())
        let line = command.arguments.joined(separator: " ")
        #expect(command.arguments.prefix(6) == ["-name", "a", "-nodefaults", "-no-user-config", "-display", "none"])
        #expect(line.contains("-machine q35 -accel tcg,tb-size=32 -cpu max -smp 2 -m 500"))
        #expect(!line.contains("kvm") && !line.contains("-cpu host"))
        #expect(line.contains("-drive if=none,id=disk0,file=/persist/apps/a/disk0.qcow2,format=qcow2 -device virtio-blk-pci,drive=disk0,bootindex=0"))
        #expect(line.contains("-drive if=none,id=disk1,file=/persist/store/verified/ab,,c,format=raw,readonly=on -device virtio-blk-pci,drive=disk1 "),
                "a read-only image comes straight from the verified base, commas in paths doubled")
        #expect(line.contains("-chardev file,id=console,path=/persist/apps/a/console.log,append=on -serial chardev:console"))
        #expect(line.contains("-qmp unix:/persist/apps/a/qmp.sock,server=on,wait=off"))
        #expect(!line.contains("-vnc"), "VNC only when the manifest enables it")
    }

    @Test func kvmLegacyAndVNCChangeOnlyTheirOptions() throws {
        let legacy = try QEMUCommand(app: "a", manifest: try BootCounter.manifest(mode: "HV_LEGACY", vnc: true),
                                     disks: [AttachedDisk(path: "/d.qcow2", format: .qcow2, readOnly: false, bus: .ide)], host: host(.kvm))
        let line = legacy.arguments.joined(separator: " ")
        #expect(line.contains("-machine pc -accel kvm -cpu host -smp 1 -m 64"))
        #expect(!line.contains("tb-size"))
        #expect(line.contains("-device ide-hd,drive=disk0,bootindex=0"))
        #expect(line.contains("-vnc 127.0.0.1:3"), "VNC listens on loopback only")
    }

    @Test func uefiAndParavirtualAppsNeedTheirFirmwareOrKernel() throws {
        #expect(throws: AppsError.unsupported(app: "a", reason: "vmmode HV_FML needs UEFI firmware (OVMF), and none is configured")) {
            try QEMUCommand(app: "a", manifest: try BootCounter.manifest(mode: "HV_FML"), disks: [], host: host())
        }
        var withOVMF = host()
        withOVMF.uefiFirmware = "/usr/share/ovmf/OVMF.fd"
        let fml = try QEMUCommand(app: "a", manifest: try BootCounter.manifest(mode: "HV_FML"), disks: [], host: withOVMF)
        #expect(fml.arguments.joined(separator: " ").contains("-bios /usr/share/ovmf/OVMF.fd"))
        #expect(throws: AppsError.self) {
            try QEMUCommand(app: "a", manifest: try BootCounter.manifest(mode: "HV_PV"), disks: [], host: host())
        }
    }

    @Test func theLimitIsAppMemoryPlusTheDocumentedOverhead() {
        let mib: UInt64 = 1 << 20
        // 64 MiB app, 1 vCPU, TCG with 32 MiB cache: 64 + 64 + 8 + 1 + 32.
        #expect(MemoryModel.limit(memoryBytes: 64 * mib, cpus: 1, accelerator: .defaultTCG) == 169 * mib)
        // 1 GiB, 4 vCPUs, KVM: 1024 + 64 + 32 + 16.
        #expect(MemoryModel.limit(memoryBytes: 1024 * mib, cpus: 4, accelerator: .kvm) == 1136 * mib)
        // KiB that are not whole MiB round up, as QEMU is given them.
        #expect(MemoryModel.limit(memoryBytes: 500 * 1024, cpus: 1, accelerator: .kvm) == 1 * mib + 72 * mib + (500 * 1024) / 64)
    }

    @Test func cgroupLimitsAreWrittenAsCgroupV2Expects() throws {
        let dir = try TemporaryDirectory("cgroup")
        let limits = CgroupLimits(cpus: 2, memoryLimit: 169 << 20)
        #expect(limits.cpuMax == "200000 100000")
        try limits.apply(to: dir.path, create: true)
        try CgroupLimits.addProcess(4242, to: dir.path, create: true)
        #expect(try String(contentsOfFile: dir.path + "/cpu.max", encoding: .utf8) == "200000 100000\n")
        #expect(try String(contentsOfFile: dir.path + "/memory.max", encoding: .utf8) == "\(169 << 20)\n")
        #expect(try String(contentsOfFile: dir.path + "/cgroup.procs", encoding: .utf8) == "4242\n")
        // A real cgroup's files exist already; without `create` a missing one is an error, not a new file.
        #expect(throws: AppsError.self) { try limits.apply(to: dir.path + "/absent") }
    }

    @Test func admissionCountsRunningLimitsAndRefusesWithTheNumbers() throws {
        let available = try MemoryModel.memAvailable()
        #expect(available > 0)
        let admission = MemoryAdmission(reserve: 128 << 20)
        let share = (available - (128 << 20)) / 5 * 3
        try admission.admit(app: "first", limit: share)
        // The same app again (a restart) is checked without its own old limit.
        try admission.admit(app: "first", limit: share)
        #expect(throws: AppsError.self) { try admission.admit(app: "second", limit: share) }
        do {
            try admission.admit(app: "second", limit: share)
        } catch {
            let text = error.description
            print("refusal: \(text)")
            #expect(text.hasPrefix("app second needs a "))
            #expect(text.contains("(\(share) bytes)") && text.contains("for running apps") && !text.contains("\n"))
        }
        admission.release(app: "first")
        try admission.admit(app: "second", limit: share)
        #expect(admission.committed == ["second": share])
    }

    @Test func qmpNamesAreCheckedAndJSONStringsEscaped() {
        #expect(jsonStringLiteral("savevm a\"b\\\n") == "\"savevm a\\\"b\\\\\\n\"")
        #expect(jsonStringLiteral("\u{1}") == "\"\\u0001\"")
    }
}
