// One app instance's QEMU, from admission to halted:
//
//   start ──admit memory──prepare disks──spawn──▶ booting ──first console line──▶ running
//                                                  (or QMP "running" once a silent console's grace passed)
//     ▲                                              │  ▲                            │
//     │                          QEMU killed/crashed │  └──backoff (bounded)─────────┤
//     │                                              ▼                               │
//     │                               broken (too many restarts, spawn failed)       │
//   stop: halting ── ACPI power button ── bounded wait ── QMP quit ── wait ── SIGKILL ──▶ halted
//
// QEMU is started and reaped through the process's one Reaper (OutpostPlatform),
// like every other child of outpostd; its exit arrives on whichever thread
// reaps. A monitor thread per instance (named "app-<name>") watches the
// console for the first line, restarts a QEMU that died, and reaps when no
// one else does (host tests, client processes). A QEMU that exits with
// status 0 without being asked was powered off by its guest: the instance is
// halted, not restarted (the seed brought such apps back up, against their
// owner's intent).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform
import Synchronization

/// close(2) under a name the instance's `close()` does not shadow.
private func closeFile(_ fd: Int32) { _ = close(fd) }

/// A supervised QEMU running one app. Its monitor thread holds it until `close()`.
public final class AppInstance: Sendable {
    public enum State: Equatable, Sendable, CustomStringConvertible {
        case halted, booting, running, halting
        case broken(String)

        public var description: String {
            switch self {
            case .halted: return "halted"
            case .booting: return "booting"
            case .running: return "running"
            case .halting: return "halting"
            case let .broken(error): return "broken: \(error)"
            }
        }
    }

    /// A manifest image with its verified base.
    public struct Disk: Sendable {
        public var image: VMManifest.Image
        public var base: BaseImage

        public init(image: VMManifest.Image, base: BaseImage) {
            self.image = image
            self.base = base
        }
    }

    /// How a stop ended.
    public enum StopOutcome: Equatable, Sendable {
        /// Nothing was running.
        case alreadyHalted
        /// The guest shut down on the ACPI power button.
        case poweredDown
        /// The guest ignored the button; QMP quit ended QEMU.
        case quit
        /// Not even quit worked; SIGKILL did.
        case killed
        /// The QEMU did not end even after SIGKILL (uninterruptible sleep); left to the reaper.
        case unresponsive
    }

    public struct Options: Sendable {
        public var qemu = "/usr/bin/qemu-system-x86_64"
        /// Takes, applies and deletes the snapshots of a halted instance's overlays.
        public var qemuImg = "/usr/bin/qemu-img"
        public var firmwareDirectory: String?
        public var uefiFirmware: String?
        public var accelerator = Accelerator.defaultTCG
        public var vncDisplay = 0
        /// Extra network devices for QEMU (see `QEMUCommand.Host.networkArguments`), after the app network's.
        public var networkArguments: [String] = []
        /// The local app network: a tap per manifest interface is created in its bridge before
        /// QEMU starts and removed once the instance is halted or broken; nil: no network.
        public var network: AppNetwork?
        /// The wait for a guest to act on the power button (the seed waits 60 s).
        public var stopGrace = Duration.seconds(60)
        /// The wait for QEMU to end after QMP quit, and again after SIGKILL.
        public var quitGrace = Duration.seconds(10)
        /// The first restart delay; it doubles per consecutive failure up to `maxBackoff`.
        public var restartBackoff = Duration.seconds(1)
        public var maxBackoff = Duration.seconds(60)
        /// Consecutive unexpected exits after which the instance is broken instead of restarted.
        public var maxRestarts = 5
        /// Running this long without dying clears the consecutive-failure count.
        public var stableAfter = Duration.seconds(60)
        /// The instance's cgroup v2 directory (created, limits written, QEMU moved in); nil: none.
        public var cgroupDirectory: String?
        /// A guest that prints nothing on its console counts as running once QMP reports
        /// status "running" this long after QEMU started; nil: only the console counts.
        public var silentConsoleGrace: Duration? = .seconds(30)
        /// How often the monitor looks at the console and the restart timer.
        public var pollInterval = Duration.milliseconds(20)
        /// console.log's size before it moves to console.log.1 (see ConsoleLog).
        public var consoleQuota = 1 << 20

        public init() {}
    }

    public let name: String
    public let manifest: VMManifest
    /// The instance's directory: overlays, console log, QMP socket.
    public let directory: String
    public let disks: [Disk]
    public let options: Options
    public let limits: CgroupLimits
    private let reaper: Reaper
    private let admission: MemoryAdmission

    public var consoleLog: String { directory + "/console.log" }
    /// The bounded console log and its reader for the controller.
    public let consoleFile: ConsoleLog
    public var qmpSocket: String { directory + "/qmp.sock" }
    public func overlayPath(_ index: Int) -> String { directory + "/disk\(index).qcow2" }

    private struct Shared {
        var state = State.halted
        var pid: pid_t?
        /// Bumped per spawn, so a late exit of an old QEMU is never taken for the current one's.
        var generation = 0
        var wanted = false
        var stopping = false
        var consoleStart = 0
        var failures = 0
        var restartAt: Deadline?
        var runningSince: MonotonicClock.Instant?
        var spawnedAt: MonotonicClock.Instant?
        var nextStatusQuery: Deadline?
        var lastExit: ChildExit?
        var exitedGeneration = 0
        var spawns = 0
        /// The last boot: spawn to running, and the wall-clock second it reached running.
        var bootDuration: Duration?
        var runningSinceUnix: Int64?
        /// QEMU ended for good on the reaping thread; the monitor removes the taps.
        var detachNetwork = false
    }
    private let shared = Mutex(Shared())
    private let wakeup: Wakeup
    private let stopSignal = StopSignal()
    private let monitor = Mutex<NamedThread?>(nil)

    public init(name: String, manifest: VMManifest, disks: [Disk], directory: String, options: Options = Options(),
                reaper: Reaper = .shared, admission: MemoryAdmission) throws(AppsError) {
        self.name = name
        self.manifest = manifest
        self.disks = disks
        self.directory = directory
        self.options = options
        self.reaper = reaper
        self.admission = admission
        consoleFile = ConsoleLog(path: directory + "/console.log", quota: options.consoleQuota)
        limits = CgroupLimits(cpus: manifest.cpus,
                              memoryLimit: MemoryModel.limit(memoryBytes: manifest.memoryBytes, cpus: manifest.cpus,
                                                             accelerator: options.accelerator))
        do { wakeup = try Wakeup(label: "app \(name)") } catch { throw .system(error) }
    }

    public var state: State { shared.withLock { $0.state } }
    /// The running QEMU's pid (not yet reaped), for RSS and the tests.
    public var pid: pid_t? { shared.withLock { $0.pid } }
    /// How many times QEMU was spawned for this instance.
    public var spawnCount: Int { shared.withLock { $0.spawns } }
    public var lastExit: ChildExit? { shared.withLock { $0.lastExit } }
    /// How long the last boot took from QEMU's start to `running` (nil until one got there).
    public var bootDuration: Duration? { shared.withLock { $0.bootDuration } }
    /// When (Unix seconds) the instance last became `running`; nil while it is not running.
    public var runningSinceUnix: Int64? { shared.withLock { $0.state == .running ? $0.runningSinceUnix : nil } }

    /// QEMU's resident memory now (VmRSS), to set against `limits.memoryMax`.
    public var residentBytes: UInt64? {
        guard let pid, let bytes = try? FileIO.read("/proc/\(pid)/status", limit: 64 << 10) else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return line.split(separator: " ").dropFirst().first.flatMap { UInt64($0) }.map { $0 * 1024 }
        }
        return nil
    }

    /// The console log as text (the last MiB).
    public func console() -> String {
        var info = stat()
        guard stat(consoleLog, &info) == 0 else { return "" }
        let size = Int(info.st_size)
        return String(decoding: Self.read(consoleLog, from: max(0, size - (1 << 20)), limit: 1 << 20), as: UTF8.self)
    }

    /// The console lines written since the last call, rotating the log when it is over its
    /// quota. A rotation while booting moves the first-line check to the new file's start.
    public func drainConsole() -> ConsoleLog.Drain {
        let drain = consoleFile.drain()
        if drain.rotated { shared.withLock { if $0.state == .booting { $0.consoleStart = 0 } } }
        return drain
    }

    /// Up to `limit` bytes of `path` from `offset` (empty when it cannot be read).
    static func read(_ path: String, from offset: Int, limit: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { closeFile(fd) }
        var bytes = [UInt8](repeating: 0, count: limit)
        var filled = 0
        while filled < limit {
            let count = bytes[filled...].withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset + filled)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            filled += count
        }
        return Array(bytes[..<filled])
    }

    /// Admits the memory limit, prepares the disks (`purge` recreates overlays from the base)
    /// and starts QEMU. Refusals come before anything starts.
    public func start(purge: Bool = false) throws(AppsError) {
        guard shared.withLock({ $0.pid == nil && !$0.wanted }) else { return }
        try admission.admit(app: name, limit: limits.memoryMax)
        do throws(AppsError) {
            if let network = options.network { try network.attach(app: name, manifest: manifest) }
            let command = try prepare(purge: purge)
            if let cgroup = options.cgroupDirectory {
                if mkdir(cgroup, 0o755) != 0 && errno != EEXIST { throw AppsError.system(.current("mkdir", cgroup)) }
                try limits.apply(to: cgroup)
            }
            try ensureMonitor()
            shared.withLock {
                $0.wanted = true
                $0.failures = 0
                $0.restartAt = nil
            }
            try spawn(command)
        } catch {
            shared.withLock {
                $0.wanted = false
                $0.state = .broken(error.description)
            }
            releaseHost()
            throw error
        }
    }

    /// Stop: the ACPI power button, up to `stopGrace` for the guest, then QMP quit, then SIGKILL.
    @discardableResult
    public func stop() -> StopOutcome {
        let pid = shared.withLock { shared -> pid_t? in
            shared.wanted = false
            shared.restartAt = nil
            guard let pid = shared.pid else {
                if case .broken = shared.state {} else { shared.state = .halted }
                return nil
            }
            shared.stopping = true
            shared.state = .halting
            return pid
        }
        guard let pid else {
            releaseHost()
            return .alreadyHalted
        }
        var outcome = StopOutcome.poweredDown
        if let qmp = try? QMPClient(socketPath: qmpSocket, deadline: Deadline(after: .seconds(5))) {
            try? qmp.powerDown(deadline: Deadline(after: .seconds(5)))
            qmp.close()
        }
        if !waitForExit(within: options.stopGrace) {
            outcome = .quit
            if let qmp = try? QMPClient(socketPath: qmpSocket, deadline: Deadline(after: .seconds(5))) {
                try? qmp.quit(deadline: Deadline(after: .seconds(5)))
                qmp.close()
            }
            if !waitForExit(within: options.quitGrace) {
                outcome = .killed
                // Still ours: its exit has not been delivered, so the pid was not reaped or reused.
                if shared.withLock({ $0.pid == pid }) { _ = kill(pid, SIGKILL) }
                if !waitForExit(within: options.quitGrace) { outcome = .unresponsive }
            }
        }
        shared.withLock {
            $0.stopping = false
            $0.state = .halted
        }
        releaseHost()
        return outcome
    }

    /// Stops and starts again on the same overlays: the guest's writes survive.
    public func restart() throws(AppsError) {
        stop()
        try start(purge: false)
    }

    /// Stops and starts on overlays recreated from the base: the guest's writes are gone.
    public func purge() throws(AppsError) {
        stop()
        try start(purge: true)
    }

    /// Takes, loads or deletes a named snapshot (stored inside the qcow2 overlays). Running:
    /// through QMP, RAM and every writable overlay together. Halted: `qemu-img snapshot` on each
    /// writable overlay (disks only; the next start boots from that disk state).
    public func snapshot(_ verb: QMPClient.SnapshotVerb, name snapshot: String, timeout: Duration = .seconds(60)) throws(AppsError) {
        try QMPClient.checkSnapshotName(snapshot, verb: verb, socket: qmpSocket)
        guard pid != nil else {
            try haltedSnapshot(verb, name: snapshot, timeout: timeout)
            return
        }
        let deadline = Deadline(after: timeout)
        let qmp = try QMPClient(socketPath: qmpSocket, deadline: deadline)
        defer { qmp.close() }
        // QEMU pauses the guest for loadvm and resumes it only on success, even when the
        // snapshot does not exist; asking first keeps a mistyped name from pausing the app.
        if verb != .save, !(try qmp.snapshotNames(deadline: deadline)).contains(snapshot) {
            throw .qmp(socket: qmpSocket, command: "\(verb.rawValue) \(snapshot)", reason: "no snapshot named \"\(snapshot)\"")
        }
        try qmp.snapshot(verb, name: snapshot, deadline: deadline)
    }

    /// The instance's named snapshots: QEMU's list while running, else the first writable
    /// overlay's snapshot table (every overlay gets the same ones).
    public func snapshots(timeout: Duration = .seconds(10)) throws(AppsError) -> [String] {
        guard pid != nil else {
            guard let first = try writableOverlays().first else { return [] }
            return try QCOW2Snapshots.names(first)
        }
        let deadline = Deadline(after: timeout)
        let qmp = try QMPClient(socketPath: qmpSocket, deadline: deadline)
        defer { qmp.close() }
        return try qmp.snapshotNames(deadline: deadline)
    }

    /// The allocated bytes of the instance's overlays (nil before it first started).
    public var diskBytes: UInt64? {
        var total: UInt64 = 0
        var any = false
        for index in disks.indices {
            var info = stat()
            guard stat(overlayPath(index), &info) == 0 else { continue }
            total += UInt64(max(0, info.st_blocks)) * 512
            any = true
        }
        return any ? total : nil
    }

    /// The overlays a snapshot covers; an instance that never started has none yet.
    private func writableOverlays() throws(AppsError) -> [String] {
        var paths: [String] = []
        for (index, disk) in disks.enumerated() where disk.image.target == .disk && !disk.image.readOnly && disk.image.driveType != .cdrom {
            let path = overlayPath(index)
            guard access(path, F_OK) == 0 else { throw .qemu(app: name, reason: "has no disk yet (\(path)); start it once first") }
            paths.append(path)
        }
        return paths
    }

    private func haltedSnapshot(_ verb: QMPClient.SnapshotVerb, name snapshot: String, timeout: Duration) throws(AppsError) {
        let overlays = try writableOverlays()
        guard !overlays.isEmpty else { throw .qemu(app: name, reason: "has no writable disk to snapshot") }
        if verb != .save {
            for overlay in overlays where !(try QCOW2Snapshots.names(overlay)).contains(snapshot) {
                throw .qemu(app: name, reason: "no snapshot named \"\(snapshot)\" on \(overlay)")
            }
        }
        let flag: String
        switch verb {
        case .save: flag = "-c"
        case .load: flag = "-a"
        case .delete: flag = "-d"
        }
        for overlay in overlays {
            let exit: ChildExit?
            do throws(SystemError) {
                exit = try reaper.run(options.qemuImg, ["snapshot", flag, snapshot, overlay], timeout: timeout)
            } catch {
                throw .qemu(app: name, reason: "cannot run \(options.qemuImg): \(error)")
            }
            guard exit == .exited(0) else {
                throw .qemu(app: name, reason: "qemu-img snapshot \(flag) \(snapshot) \(overlay) "
                            + (exit.map { "ended: \($0)" } ?? "did not end within \(timeout)"))
            }
        }
    }

    /// Waits until `predicate` holds for the state, at most `timeout`; returns the last state seen.
    @discardableResult
    public func waitForState(within timeout: Duration, _ predicate: (State) -> Bool) -> State {
        let deadline = Deadline(after: timeout)
        while true {
            let state = self.state
            if predicate(state) || deadline.hasPassed { return state }
            MonotonicClock.sleep(for: .milliseconds(10))
        }
    }

    /// Stops the instance and its monitor thread. The instance cannot be started again.
    public func close() {
        stop()
        stopSignal.raise()
        wakeup.signal()
        monitor.withLock { $0 }?.join()
    }

    // MARK: - Internals

    /// Creates or keeps the overlays and builds the command line.
    private func prepare(purge: Bool) throws(AppsError) -> QEMUCommand {
        if mkdir(directory, 0o755) != 0 && errno != EEXIST { throw .system(.current("mkdir", directory)) }
        var attached: [AttachedDisk] = []
        var kernel: String?
        var initrd: String?
        for (index, disk) in disks.enumerated() {
            switch disk.image.target {
            case .kernel: kernel = disk.base.path
            case .initrd, .ramDisk: initrd = disk.base.path
            case .disk:
                let bus: AttachedDisk.Bus = disk.image.driveType == .cdrom ? .cdrom : (manifest.mode == .legacy ? .ide : .virtio)
                if disk.image.readOnly || bus == .cdrom {
                    // Read-only: straight from the verified base, no overlay to keep or purge.
                    attached.append(AttachedDisk(path: disk.base.path, format: disk.base.format, readOnly: true, bus: bus))
                } else {
                    let overlay = InstanceDisk(path: overlayPath(index), base: disk.base, minimumSize: disk.image.maxSizeBytes)
                    _ = try overlay.prepare(purge: purge, preserve: disk.image.preserve)
                    attached.append(AttachedDisk(path: overlay.path, format: .qcow2, readOnly: false, bus: bus))
                }
            }
        }
        let taps = options.network?.taps(app: name) ?? []
        let nics = taps.enumerated().flatMap { index, tap in tap.qemuArguments(index: index, legacy: manifest.mode == .legacy) }
        let host = QEMUCommand.Host(qemu: options.qemu, firmwareDirectory: options.firmwareDirectory,
                                    uefiFirmware: options.uefiFirmware, accelerator: options.accelerator,
                                    consoleLog: consoleLog, qmpSocket: qmpSocket, vncDisplay: options.vncDisplay,
                                    networkArguments: nics + options.networkArguments)
        return try QEMUCommand(app: name, manifest: manifest, disks: attached, kernel: kernel, initrd: initrd, host: host)
    }

    private func spawn(_ command: QEMUCommand) throws(AppsError) {
        _ = unlink(qmpSocket)
        markConsole(start: shared.withLock { $0.spawns } + 1)
        var info = stat()
        let consoleStart = stat(consoleLog, &info) == 0 ? Int(info.st_size) : 0
        let generation = shared.withLock { shared -> Int in
            shared.generation += 1
            shared.consoleStart = consoleStart
            shared.state = .booting
            shared.runningSince = nil
            shared.spawnedAt = MonotonicClock.now()
            shared.nextStatusQuery = nil
            return shared.generation
        }
        let pid: pid_t
        do {
            pid = try reaper.spawn(command.binary, command.arguments) { [weak self] exit in
                self?.exited(generation: generation, exit)
            }
        } catch {
            throw .qemu(app: name, reason: "cannot start \(command.binary): \(error)")
        }
        shared.withLock { shared in
            // A QEMU that ended before this line (another thread reaped it) stays ended.
            if shared.exitedGeneration != generation { shared.pid = pid }
            shared.spawns += 1
        }
        if let cgroup = options.cgroupDirectory { try CgroupLimits.addProcess(pid, to: cgroup) }
        wakeup.signal()
    }

    /// Appends `---- outpost: QEMU start N ----` to the console log before QEMU opens it, so the
    /// log (and `app console`) shows where each run begins: a guest's output from before a crash
    /// is not mistaken for the run after it. Best effort: a console that cannot be written is
    /// reported by QEMU itself when it opens the file.
    private func markConsole(start: Int) {
        let fd = open(consoleLog, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { return }
        defer { closeFile(fd) }
        let line = Array("---- outpost: QEMU start \(start) ----\n".utf8)
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// The reaper's report that a QEMU of this instance ended.
    private func exited(generation: Int, _ exit: ChildExit) {
        let release = shared.withLock { shared -> Bool in
            guard shared.generation == generation else { return false }
            shared.exitedGeneration = generation
            shared.pid = nil
            shared.lastExit = exit
            shared.runningSince = nil
            guard shared.wanted, !shared.stopping else { return false }
            if exit == .exited(0) {
                // The guest powered itself off: respect it.
                shared.wanted = false
                shared.state = .halted
                return true
            }
            shared.failures += 1
            if shared.failures > options.maxRestarts {
                shared.wanted = false
                shared.state = .broken("QEMU \(exit), \(shared.failures) times in a row; not restarted")
                return true
            }
            let factor = Int64(1) << Int64(min(shared.failures - 1, 20))
            let delay = min(options.restartBackoff * factor, options.maxBackoff)
            shared.restartAt = Deadline(after: delay)
            shared.state = .booting
            return false
        }
        if release {
            // The taps go on the monitor thread: this is the reaping thread (PID 1's loop on a
            // device), which must not wait for nft.
            admission.release(app: name)
            shared.withLock { $0.detachNetwork = true }
        }
        wakeup.signal()
    }

    private func ensureMonitor() throws(AppsError) {
        try monitor.withLock { (thread: inout NamedThread?) throws(AppsError) in
            guard thread == nil else { return }
            do throws(SystemError) {
                thread = try NamedThread.start(name: "app-\(name)") { [self] in
                    while !stopSignal.isRaised {
                        reaper.reapAll()
                        tick()
                        wakeup.wait(timeout: options.pollInterval)
                    }
                }
            } catch {
                throw .system(error)
            }
        }
    }

    /// One look at the instance: restart when due, notice the first console line.
    private func tick() {
        if shared.withLock({ shared in
            defer { shared.detachNetwork = false }
            return shared.detachNetwork && shared.pid == nil && !shared.wanted
        }) {
            options.network?.detach(app: name)
        }
        enum Action { case none, respawn, checkConsole(Int, queryStatus: Bool) }
        let action = shared.withLock { shared -> Action in
            if let restartAt = shared.restartAt, shared.wanted, shared.pid == nil {
                guard restartAt.hasPassed else { return .none }
                shared.restartAt = nil
                return .respawn
            }
            if shared.state == .running, let since = shared.runningSince, since.elapsed >= options.stableAfter {
                shared.failures = 0
            }
            guard shared.state == .booting, shared.pid != nil else { return .none }
            var query = false
            if let grace = options.silentConsoleGrace, let spawned = shared.spawnedAt, spawned.elapsed >= grace,
               shared.nextStatusQuery?.hasPassed ?? true {
                // At most one QMP round trip a second while the console stays silent.
                shared.nextStatusQuery = Deadline(after: .seconds(1))
                query = true
            }
            return .checkConsole(shared.consoleStart, queryStatus: query)
        }
        switch action {
        case .none: break
        case .respawn:
            do throws(AppsError) { try spawn(try prepare(purge: false)) } catch {
                shared.withLock {
                    $0.wanted = false
                    $0.state = .broken(error.description)
                }
                releaseHost()
            }
        case let .checkConsole(start, queryStatus):
            var up = Self.read(consoleLog, from: start, limit: 64 << 10).contains(0x0a)
            if !up && queryStatus, let qmp = try? QMPClient(socketPath: qmpSocket, deadline: Deadline(after: .seconds(2))) {
                up = (try? qmp.status(deadline: Deadline(after: .seconds(2)))) == "running"
                qmp.close()
            }
            guard up else { return }
            shared.withLock { shared in
                if shared.state == .booting, shared.consoleStart == start {
                    shared.state = .running
                    shared.runningSince = MonotonicClock.now()
                    shared.bootDuration = shared.spawnedAt?.elapsed
                    shared.runningSinceUnix = Int64(time(nil))
                }
            }
        }
    }

    /// Gives back what a running instance holds on the host: its memory admission and its taps.
    private func releaseHost() {
        admission.release(app: name)
        options.network?.detach(app: name)
    }

    /// Waits for the current QEMU's exit (reaping meanwhile), at most `timeout`.
    private func waitForExit(within timeout: Duration) -> Bool {
        let deadline = Deadline(after: timeout)
        while true {
            reaper.reapAll()
            if shared.withLock({ $0.pid == nil }) { return true }
            if deadline.hasPassed { return false }
            MonotonicClock.sleep(for: .milliseconds(10))
        }
    }
}
