import Foundation

/// Boots an Outpost image the way a developer does: QEMU (TCG by default)
/// with OVMF, swtpm as the TPM, the i6300esb watchdog, a virtio disk and NIC,
/// and the serial console on the terminal or captured for scripts.
public struct QEMUOptions: Sendable {
    public var image: String
    public var headless = false
    public var timeout: Double?
    public var accel = "tcg"
    public var memoryMiB = 1024
    /// Boot without writing to the image (QEMU snapshot mode).
    public var snapshot = false
    /// A QEMU monitor socket for tests (system_powerdown, set_link, quit).
    public var monitorSocket: String?
    /// Extra NICs beyond the first (for the network failover tests).
    public var nics = 1
    /// Where the serial console is copied, in addition to stdout.
    public var consoleLog: String?
    /// In headless mode: stop at the first console line containing any of these.
    public var untilMarkers = ["outpost: ready"]
    /// In headless mode: after the marker, press the ACPI power button and
    /// wait (bounded) for the guest's orderly power-off instead of stopping QEMU.
    public var powerOffAtMarker = false
    /// Extra raw disks (e.g. update media), attached as further virtio drives.
    public var extraDisks: [String] = []
    /// In headless mode: forward standard input to the serial console, so a
    /// script can type console commands ("update status").
    public var consoleInput = false
    public var extraArgs: [String] = []

    public init(image: String) { self.image = image }
}

public enum QEMURunner {
    public static let ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    public static let ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"

    /// Runs QEMU until it exits, the ready marker appears (headless), or the
    /// timeout passes. Returns true when the ready marker was seen. Every
    /// process it starts it also stops, by PID.
    public static func run(_ o: QEMUOptions) throws -> Bool {
        let fm = FileManager.default
        guard fm.fileExists(atPath: o.image) else { throw BuilderError.missingInput(path: o.image, what: "disk image") }
        for f in [ovmfCode, ovmfVars] where !fm.fileExists(atPath: f) {
            throw BuilderError.missingInput(path: f, what: "OVMF firmware (install the 'ovmf' package)")
        }
        let work = NSTemporaryDirectory() + "outpost-run-\(getpid())"
        try? fm.removeItem(atPath: work)
        try fm.createDirectory(atPath: work + "/tpm", withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: work) }
        try fm.copyItem(atPath: ovmfVars, toPath: work + "/vars.fd")

        // swtpm first: QEMU connects to its socket at start-up.
        let tpmSock = work + "/swtpm.sock"
        let swtpm = Process()
        swtpm.executableURL = URL(fileURLWithPath: try path("swtpm"))
        swtpm.arguments = ["socket", "--tpm2", "--tpmstate", "dir=\(work)/tpm", "--ctrl", "type=unixio,path=\(tpmSock)", "--terminate"]
        swtpm.standardOutput = FileHandle.nullDevice
        try swtpm.run()
        defer { stop(swtpm) }
        let deadline = Date().addingTimeInterval(10)
        while !fm.fileExists(atPath: tpmSock) {
            guard Date() < deadline, swtpm.isRunning else { throw BuilderError.io(path: tpmSock, message: "swtpm did not start") }
            usleep(20_000)
        }

        let format = o.image.hasSuffix(".qcow2") ? "qcow2" : "raw"
        var args = [
            "-machine", "q35", "-accel", o.accel, "-m", String(o.memoryMiB), "-smp", "2",
            "-drive", "if=pflash,format=raw,readonly=on,file=\(ovmfCode)",
            "-drive", "if=pflash,format=raw,file=\(work)/vars.fd",
            "-drive", "file=\(o.image),format=\(format),if=virtio\(o.snapshot ? ",snapshot=on" : "")",
            "-chardev", "socket,id=chrtpm,path=\(tpmSock)", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
            "-device", "i6300esb", "-action", "watchdog=reset",
            "-display", "none", "-no-user-config",
        ]
        for i in 0..<max(1, o.nics) {
            args += ["-netdev", "user,id=n\(i)", "-device", "virtio-net-pci,netdev=n\(i),mac=52:54:00:12:34:\(String(format: "%02x", 0x56 + i))"]
        }
        for (i, d) in o.extraDisks.enumerated() {
            args += ["-drive", "file=\(d),format=raw,if=virtio,index=\(i + 1)"]
        }
        let monitor = o.monitorSocket ?? (o.powerOffAtMarker ? work + "/monitor.sock" : nil)
        if let m = monitor { args += ["-monitor", "unix:\(m),server,nowait"] }
        args += ["-serial", o.headless ? "stdio" : "mon:stdio"]
        args += o.extraArgs

        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: try path("qemu-system-x86_64"))
        qemu.arguments = args
        if !o.headless {
            // Interactive: the terminal is the serial console (Ctrl-A X quits).
            qemu.standardInput = FileHandle.standardInput
            try qemu.run()
            let timer = o.timeout.map { t in watchdog(after: t) { stop(qemu) } }
            qemu.waitUntilExit()
            timer?.cancel()
            return qemu.terminationStatus == 0
        }
        let out = Pipe()
        qemu.standardOutput = out
        qemu.standardError = out
        qemu.standardInput = o.consoleInput ? FileHandle.standardInput : FileHandle.nullDevice
        try qemu.run()
        let timedOut = TimeoutFlag()
        let timer = o.timeout.map { t in watchdog(after: t) { timedOut.set(); stop(qemu) } }
        defer { timer?.cancel(); stop(qemu) }
        let log = o.consoleLog.flatMap { p -> FileHandle? in
            _ = fm.createFile(atPath: p, contents: nil)
            return FileHandle(forWritingAtPath: p)
        }
        var pending = Data()
        while true {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            FileHandle.standardOutput.write(chunk)
            log?.write(chunk)
            pending.append(chunk)
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...nl)
                if o.untilMarkers.contains(where: { line.contains($0) }) {
                    guard o.powerOffAtMarker, let monitor else { return true }
                    // Press the power button every 3 s until the guest is off: the
                    // agent's button reader starts just after the ready line, so
                    // a single early press can be lost. Bounded to 90 s.
                    let presser = DispatchWorkItem {
                        for _ in 0..<30 where qemu.isRunning {
                            try? sendMonitor(monitor, "system_powerdown")
                            for _ in 0..<30 where qemu.isRunning { usleep(100_000) }
                        }
                        stop(qemu)
                    }
                    DispatchQueue.global().async(execute: presser)
                    // The console until QEMU exits: the guest's orderly power-off.
                    while true {
                        let rest = out.fileHandleForReading.availableData
                        if rest.isEmpty { break }
                        FileHandle.standardOutput.write(rest)
                        log?.write(rest)
                    }
                    qemu.waitUntilExit()
                    return true
                }
            }
        }
        if timedOut.value {
            throw BuilderError.io(path: o.image, message: "no '\(o.untilMarkers.joined(separator: "' or '"))' line within \(Int(o.timeout ?? 0)) s")
        }
        return false
    }

    /// Sends one command to the QEMU monitor's UNIX socket.
    static func sendMonitor(_ path: String, _ command: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BuilderError.io(path: path, message: "socket: errno \(errno)") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw BuilderError.io(path: path, message: "monitor socket path too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else { throw BuilderError.io(path: path, message: "cannot connect to the QEMU monitor: errno \(errno)") }
        let line = Array((command + "\n").utf8)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        usleep(200_000)   // let QEMU read it before the socket closes
    }

    static func path(_ tool: String) throws -> String {
        guard let p = Tool.which(tool) else { throw BuilderError.toolMissing(tool) }
        return p
    }

    /// SIGTERM, then SIGKILL after two seconds: only the process we started.
    static func stop(_ p: Process) {
        guard p.isRunning else { return }
        kill(p.processIdentifier, SIGTERM)
        for _ in 0..<100 where p.isRunning { usleep(20_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    }

    static func watchdog(after seconds: Double, _ action: @escaping @Sendable () -> Void) -> DispatchWorkItem {
        let item = DispatchWorkItem(block: action)
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds, execute: item)
        return item
    }
}

/// A flag set from the timeout's queue and read on the main thread.
final class TimeoutFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    func set() { lock.lock(); flag = true; lock.unlock() }
    var value: Bool { lock.lock(); defer { lock.unlock() }; return flag }
}
