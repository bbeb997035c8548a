import Foundation
import OutpostProcess
import Synchronization

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
    /// The guest's TPM (swtpm).
    public var tpm: TPM = .temporary
    /// When set, a TPM made for this run gets EK certificates as a real part does, issued by
    /// the local CA kept in this directory (`TPMManufacture`); nil: swtpm's bare state.
    public var endorsementCA: String?
    public var extraArgs: [String] = []

    /// Where the guest's TPM keeps its state.
    public enum TPM: Sendable, Equatable {
        /// In this directory, made when missing and kept after QEMU ends: the device keeps its
        /// TPM (its SRK and keys) from one run to the next, as a real device does.
        case persistent(directory: String)
        /// Starts from a copy of this directory when it exists and throws the copy away (for
        /// `--snapshot`, where the disk is not written either).
        case copyOf(directory: String)
        /// A new TPM, thrown away when QEMU ends.
        case temporary
        /// No TPM device at all.
        case none
    }

    public init(image: String) { self.image = image }
}

/// How a boot ended.
public struct QEMUOutcome: Sendable {
    /// Headless: a marker line appeared.
    public var ready: Bool
    /// How QEMU ended.
    public var qemu: Termination
    /// The signal (SIGINT, SIGTERM, SIGHUP) that made `outpost run` stop QEMU, if any.
    public var interruptedBy: Int32?

    /// The status `outpost run` exits with: QEMU's, or 128 + the signal that
    /// interrupted `outpost run` (the shell's convention).
    public var exitStatus: Int32 { interruptedBy.map { 128 + $0 } ?? qemu.shellStatus }
}

/// Why a boot could not start or did not reach its marker.
public enum QEMUError: Error, CustomStringConvertible {
    case missingInput(path: String, what: String)
    case io(path: String, message: String)
    case swtpm(String)
    case notForeground
    case interrupted(signal: Int32)
    case noMarker(image: String, markers: [String], seconds: Int)

    public var description: String {
        switch self {
        case let .missingInput(path, what): return "\(path): missing \(what)"
        case let .io(path, message): return "\(path): \(message)"
        case let .swtpm(detail): return "swtpm did not start\(detail.isEmpty ? "" : ": \(detail)")"
        case .notForeground:
            return "outpost run is not the terminal's foreground job, so QEMU could not use the terminal (run it in the foreground, or use --headless)"
        case let .interrupted(signal): return "interrupted by signal \(signal) before QEMU started"
        case let .noMarker(image, markers, seconds):
            return "\(image): no '\(markers.joined(separator: "' or '"))' line within \(seconds) s"
        }
    }
}

public enum QEMURunner {
    public static let ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    public static let ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"

    /// Runs QEMU until it exits, the ready marker appears (headless), or the
    /// timeout passes. Every process it starts it also stops, by PID, and on
    /// every way out (QEMU exits or is killed, an error, SIGINT/SIGTERM/SIGHUP
    /// to this process) swtpm is stopped, the temporary directory removed and
    /// the terminal's settings restored.
    public static func run(_ o: QEMUOptions) throws -> QEMUOutcome {
        let fm = FileManager.default
        guard fm.fileExists(atPath: o.image) else { throw QEMUError.missingInput(path: o.image, what: "disk image") }
        for f in [ovmfCode, ovmfVars] where !fm.fileExists(atPath: f) {
            throw QEMUError.missingInput(path: f, what: "OVMF firmware (install the 'ovmf' package)")
        }
        // QEMU shares this process's process group (see HostProcess.run), so at a
        // terminal it can only use it if that group is the foreground one.
        if isatty(STDIN_FILENO) == 1, !o.headless, tcgetpgrp(STDIN_FILENO) != getpgrp() {
            throw QEMUError.notForeground
        }

        let session = Session()
        let trap = try SignalTrap { session.interrupt($0) }
        defer { trap.remove() }
        // QEMU restores the terminal when it exits normally, not when it is killed.
        let terminal = SavedTerminal(fd: STDIN_FILENO)
        defer { terminal?.restore() }

        let work = try makeWorkDirectory()
        defer { try? fm.removeItem(atPath: work) }
        try fm.copyItem(atPath: ovmfVars, toPath: work + "/vars.fd")

        // swtpm first: QEMU connects to its socket at start-up.
        var tpmSock: String?
        var swtpm: Background?
        defer { swtpm?.stop() }
        if let state = try tpmStateDirectory(o.tpm, work: work) {
            if let ca = o.endorsementCA, TPMManufacture.isFresh(state) {
                let maker = TPMManufacture(caDirectory: ca)
                try maker.manufacture(stateDirectory: state)
                FileHandle.standardError.write(Data(("outpost run: a new TPM, its EK certificates issued by the local CA in \(ca)"
                    + " (for a controller: outpost-controller ek-ca add \(maker.rootCertificate); ek-ca add \(maker.issuerCertificate))\n").utf8))
            }
            let sock = work + "/swtpm.sock"
            let tpm = Background(["swtpm", "socket", "--tpm2", "--tpmstate", "dir=\(state)",
                                  "--ctrl", "type=unixio,path=\(sock)", "--terminate"]) { session.started(swtpm: $0) }
            swtpm = tpm
            let deadline = Date().addingTimeInterval(10)
            while !fm.fileExists(atPath: sock) {
                if let signal = session.interruption { throw QEMUError.interrupted(signal: signal) }
                if let failure = tpm.failure { throw failure }
                guard Date() < deadline else { throw QEMUError.swtpm("no socket at \(sock) within 10 s") }
                usleep(20_000)
            }
            tpmSock = sock
        }

        let monitor = o.monitorSocket ?? (o.powerOffAtMarker ? work + "/monitor.sock" : nil)
        let args = qemuArguments(o, work: work, tpmSocket: tpmSock, monitor: monitor)
        let timer = o.timeout.map { t in
            watchdog(after: t) { session.timeOut() }
        }
        defer { timer?.cancel() }
        if let signal = session.interruption { throw QEMUError.interrupted(signal: signal) }

        let termination: Termination
        if o.headless {
            let console = try ConsoleCopy(o, session: session, monitor: monitor)
            termination = try HostProcess.run(args, stdin: o.consoleInput ? .inherit : .null,
                                              output: .stream { console.take($0) }) { session.started(qemu: $0) }
        } else {
            // Interactive: the terminal is the serial console and the QEMU
            // monitor (-serial mon:stdio), so Ctrl-A X quits and Ctrl-A C
            // switches to the monitor.
            termination = try HostProcess.run(args, stdin: .inherit, output: .inherit) { session.started(qemu: $0) }
        }
        session.qemuEnded()
        let outcome = QEMUOutcome(ready: session.ready, qemu: termination, interruptedBy: session.interruption)
        if o.headless, !outcome.ready, session.timedOut, outcome.interruptedBy == nil {
            throw QEMUError.noMarker(image: o.image, markers: o.untilMarkers, seconds: Int(o.timeout ?? 0))
        }
        return outcome
    }

    /// The directory swtpm runs on for `tpm`, ready (made, or copied for `.copyOf`); nil for no TPM.
    static func tpmStateDirectory(_ tpm: QEMUOptions.TPM, work: String) throws -> String? {
        let fm = FileManager.default
        func make(_ directory: String) throws {
            do {
                try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw QEMUError.io(path: directory, message: "cannot create the TPM state directory: \(error.localizedDescription)")
            }
        }
        switch tpm {
        case .none:
            return nil
        case .temporary:
            try make(work + "/tpm")
            return work + "/tpm"
        case let .persistent(directory):
            var isDirectory: ObjCBool = false
            if fm.fileExists(atPath: directory, isDirectory: &isDirectory), !isDirectory.boolValue {
                throw QEMUError.io(path: directory, message: "the TPM state path is not a directory")
            }
            try make(directory)
            return directory
        case let .copyOf(directory):
            guard fm.fileExists(atPath: directory) else {
                try make(work + "/tpm")
                return work + "/tpm"
            }
            do {
                try fm.copyItem(atPath: directory, toPath: work + "/tpm")
            } catch {
                throw QEMUError.io(path: directory, message: "cannot copy the TPM state: \(error.localizedDescription)")
            }
            // swtpm's lock file belongs to whichever swtpm runs on the original.
            try? fm.removeItem(atPath: work + "/tpm/.lock")
            return work + "/tpm"
        }
    }

    static func qemuArguments(_ o: QEMUOptions, work: String, tpmSocket: String?, monitor: String?) -> [String] {
        let format = o.image.hasSuffix(".qcow2") ? "qcow2" : "raw"
        var args = [
            "qemu-system-x86_64",
            "-machine", "q35", "-accel", o.accel, "-m", String(o.memoryMiB), "-smp", "2",
            "-drive", "if=pflash,format=raw,readonly=on,file=\(ovmfCode)",
            "-drive", "if=pflash,format=raw,file=\(work)/vars.fd",
            "-drive", "file=\(o.image),format=\(format),if=virtio\(o.snapshot ? ",snapshot=on" : "")",
            "-device", "i6300esb", "-action", "watchdog=reset",
            "-display", "none", "-no-user-config",
        ]
        if let tpmSocket {
            args += ["-chardev", "socket,id=chrtpm,path=\(tpmSocket)", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                     "-device", "tpm-tis,tpmdev=tpm0"]
        }
        for i in 0..<max(1, o.nics) {
            args += ["-netdev", "user,id=n\(i)", "-device", "virtio-net-pci,netdev=n\(i),mac=52:54:00:12:34:\(String(format: "%02x", 0x56 + i))"]
        }
        for (i, d) in o.extraDisks.enumerated() {
            args += ["-drive", "file=\(d),format=raw,if=virtio,index=\(i + 1)"]
        }
        // An entropy source, as real hardware has one (RDRAND, the TPM's RNG): TCG's
        // CPU model has no RDRAND, and without a seeded CRNG the agent's first
        // getrandom(2) waits about 1 s while the kernel gathers timer jitter. Last,
        // so the PCI addresses of the disks and NICs stay where they were.
        args += ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]
        if let m = monitor { args += ["-monitor", "unix:\(m),server,nowait"] }
        args += ["-serial", o.headless ? "stdio" : "mon:stdio"]
        return args + o.extraArgs
    }

    /// A private directory under $TMPDIR for the firmware variables, swtpm's
    /// state and sockets; removed on every way out.
    static func makeWorkDirectory() throws -> String {
        var template = Array((NSTemporaryDirectory() + "outpost-run-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        guard made != nil else {
            throw QEMUError.io(path: NSTemporaryDirectory(), message: "cannot create a temporary directory: \(String(cString: strerror(errno)))")
        }
        return template.withUnsafeBufferPointer { buffer in buffer.baseAddress.map { String(cString: $0) } ?? "" }
    }

    /// Sends one command to the QEMU monitor's UNIX socket.
    static func sendMonitor(_ path: String, _ command: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw QEMUError.io(path: path, message: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw QEMUError.io(path: path, message: "monitor socket path too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else {
            throw QEMUError.io(path: path, message: "cannot connect to the QEMU monitor: \(String(cString: strerror(errno)))")
        }
        let line = Array((command + "\n").utf8)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        usleep(200_000)   // let QEMU read it before the socket closes
    }

    static func watchdog(after seconds: Double, _ action: @escaping @Sendable () -> Void) -> DispatchWorkItem {
        let item = DispatchWorkItem(block: action)
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds, execute: item)
        return item
    }
}

/// What one `run` has started and what has happened to it, shared by the
/// main thread, the timeout, the signal thread and the console reader.
final class Session: Sendable {
    private struct State {
        var qemu: RunningProcess?
        var swtpm: RunningProcess?
        var interruption: Int32?
        var timedOut = false
        var ready = false
    }
    private let state = Mutex(State())

    func started(qemu: RunningProcess) {
        // A signal that arrived while QEMU was being started is acted on now.
        let pending = state.withLock { s in s.qemu = qemu; return s.interruption != nil || s.timedOut }
        if pending { qemu.stop(grace: .seconds(5)) }
    }
    func started(swtpm: RunningProcess) { state.withLock { $0.swtpm = swtpm } }
    func qemuEnded() { state.withLock { $0.qemu = nil } }

    /// SIGINT/SIGTERM/SIGHUP to `outpost run`: stop QEMU (it exits cleanly on
    /// SIGTERM and restores the terminal); the main thread cleans up the rest.
    func interrupt(_ signal: Int32) {
        let qemu = state.withLock { s -> RunningProcess? in
            if s.interruption == nil { s.interruption = signal }
            return s.qemu
        }
        qemu?.stop(grace: .seconds(5))
    }
    func timeOut() {
        let qemu = state.withLock { s -> RunningProcess? in s.timedOut = true; return s.qemu }
        qemu?.stop()
    }
    /// Headless: a marker appeared.
    func markReady() { state.withLock { $0.ready = true } }

    var interruption: Int32? { state.withLock { $0.interruption } }
    var timedOut: Bool { state.withLock { $0.timedOut } }
    var ready: Bool { state.withLock { $0.ready } }
    var qemu: RunningProcess? { state.withLock { $0.qemu } }
}

/// A helper program (swtpm) run on a thread of its own for as long as QEMU
/// needs it.
final class Background: Sendable {
    private struct State {
        var process: RunningProcess?
        var ended: Termination?
        var error: (any Error)?
        var output: [UInt8] = []
    }
    private let state = Mutex(State())
    private let done = DispatchSemaphore(value: 0)
    private let name: String

    init(_ argv: [String], started: @escaping @Sendable (RunningProcess) -> Void) {
        name = argv.first ?? ""
        let thread = Thread { [self] in
            do {
                let ended = try HostProcess.run(argv, output: .stream { [self] chunk in
                    state.withLock { s in s.output = Array((s.output + chunk).suffix(4096)) }
                }) { [self] process in
                    state.withLock { $0.process = process }
                    started(process)
                }
                state.withLock { $0.ended = ended }
            } catch {
                state.withLock { $0.error = error }
            }
            done.signal()
        }
        thread.name = "outpost-\(name)"
        thread.start()
    }

    /// Why it ended before it was asked to, with its last line of output.
    var failure: QEMUError? {
        state.withLock { s in
            let last = String(decoding: s.output, as: UTF8.self).split(whereSeparator: \.isNewline).last.map(String.init) ?? ""
            if let error = s.error { return .swtpm("\(error)") }
            if let ended = s.ended { return .swtpm("\(name) \(ended)\(last.isEmpty ? "" : ": \(last)")") }
            return nil
        }
    }

    /// Stops the program if it still runs and waits (bounded) until it is reaped.
    func stop() {
        // swtpm --terminate exits by itself once QEMU disconnects; give it a moment.
        if done.wait(timeout: .now() + 1) == .success { done.signal(); return }
        let process = state.withLock { $0.process }
        process?.stop()
        if done.wait(timeout: .now() + 5) == .success { done.signal() }
    }
}

/// Headless: copies QEMU's console to stdout (and the log), watches for the
/// marker lines, and after a marker stops QEMU or presses its power button.
final class ConsoleCopy: Sendable {
    private struct State {
        var pending: [UInt8] = []
        var finished = false
    }
    private let state = Mutex(State())
    private let options: QEMUOptions
    private let session: Session
    private let monitor: String?
    private let log: FileHandle?

    init(_ o: QEMUOptions, session: Session, monitor: String?) throws {
        options = o
        self.session = session
        self.monitor = monitor
        if let path = o.consoleLog {
            guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
                throw QEMUError.io(path: path, message: "cannot create the console log")
            }
            log = h
        } else {
            log = nil
        }
    }

    func take(_ chunk: [UInt8]) {
        let marker: Bool = state.withLock { s in
            if s.finished { return false }
            s.pending += chunk
            var found = false
            while let nl = s.pending.firstIndex(of: 0x0A) {
                let line = String(decoding: s.pending[..<nl], as: UTF8.self)
                if options.untilMarkers.contains(where: { line.contains($0) }) {
                    found = true
                    // Without a power-off the console ends at the marker line, as before.
                    if !options.powerOffAtMarker {
                        let upToLine = chunk.count - (s.pending.count - nl - 1)
                        copy(Array(chunk.prefix(max(0, upToLine))))
                        s.finished = true
                        return true
                    }
                }
                s.pending.removeSubrange(...nl)
            }
            copy(chunk)
            return found
        }
        guard marker, !session.ready else { return }
        session.markReady()
        guard options.powerOffAtMarker, let monitor, let qemu = session.qemu else {
            session.qemu?.stop()
            return
        }
        // Press the power button every 3 s until the guest is off: the agent's
        // button reader starts just after the ready line, so a single early
        // press can be lost. Bounded to 90 s, then QEMU is stopped.
        let presser = Thread {
            for _ in 0..<30 where qemu.isRunning {
                try? QEMURunner.sendMonitor(monitor, "system_powerdown")
                for _ in 0..<30 where qemu.isRunning { usleep(100_000) }
            }
            qemu.stop()
        }
        presser.name = "outpost-power-button"
        presser.start()
    }

    private func copy(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        FileHandle.standardOutput.write(Data(bytes))
        log?.write(Data(bytes))
    }
}
