import Foundation
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// Real QEMU (TCG, single level; a boot sector prints within ~0.2 s here), real overlays, the
/// process's reaper. Every wait is bounded and only the instance's own QEMU is ever killed.
@Suite("App instances run the boot-sector app in real QEMU", .serialized)
struct AppInstanceTests {
    static let boot = Duration.seconds(30)

    /// Options for tests: fast restarts and a short ACPI wait, bounded everywhere.
    static func options(stopGrace: Duration = .seconds(10)) -> AppInstance.Options {
        var options = AppInstance.Options()
        options.stopGrace = stopGrace
        options.quitGrace = .seconds(10)
        options.restartBackoff = .milliseconds(200)
        return options
    }

    static func instance(_ dir: String, name: String = "counter", readOnly: Bool = false, ignoreACPI: Bool = false,
                         memoryKiB: Int = 65536, cpus: Int = 1, options: AppInstance.Options = options(),
                         admission: MemoryAdmission = MemoryAdmission()) throws -> AppInstance {
        let base = try BootCounter.disk(in: dir, ignoreACPI: ignoreACPI)
        let manifest = try BootCounter.manifest(name: name, memoryKiB: memoryKiB, cpus: cpus, readOnly: readOnly)
        return try AppInstance(name: name, manifest: manifest, disks: [AppInstance.Disk(image: manifest.images[0], base: base)],
                               directory: dir + "/" + name, options: options, admission: admission)
    }

    /// Waits for the console to show `count` boot lines (or a line containing `text`).
    static func waitForBoots(_ app: AppInstance, _ count: Int) throws {
        try waitFor("\(count) boot lines on \(app.consoleLog): \(app.console())", within: boot) {
            BootCounter.boots(app.console()).count >= count
        }
    }

    static func report(_ app: AppInstance, _ what: String) {
        if let rss = app.residentBytes {
            print("\(what): QEMU RSS \(rss >> 10) KiB, limit \(app.limits.memoryMax >> 10) KiB (app \(app.manifest.memoryBytes >> 10) KiB)")
            #expect(rss <= app.limits.memoryMax, "QEMU stays under its memory limit")
        }
    }

    @Test func theCounterSurvivesARestartAndPurgeResetsIt() throws {
        let dir = try TemporaryDirectory("apps")
        let app = try Self.instance(dir.path)
        defer { app.close() }
        let started = MonotonicClock.now()
        try app.start()
        let state = app.waitForState(within: Self.boot) { $0 == .running }
        #expect(state == .running, "the first console line makes the instance running: \(app.console())")
        print("start to running: \(started.elapsed)")
        #expect(BootCounter.boots(app.console()) == [1])
        Self.report(app, "boot 1")

        let qmp = try QMPClient(socketPath: app.qmpSocket, deadline: Deadline(after: .seconds(5)))
        #expect(try qmp.status(deadline: Deadline(after: .seconds(5))) == "running")
        #expect(throws: AppsError.self) { try qmp.execute("no-such-command", deadline: Deadline(after: .seconds(5))) }
        qmp.close()

        try app.restart()
        try Self.waitForBoots(app, 2)
        #expect(BootCounter.boots(app.console()) == [1, 2], "restart keeps the overlay")
        #expect(FileManager.default.fileExists(atPath: app.overlayPath(0)))

        try app.purge()
        try Self.waitForBoots(app, 3)
        #expect(BootCounter.boots(app.console()) == [1, 2, 1], "purge recreates the overlay from the base")
        let stopped = MonotonicClock.now()
        #expect(app.stop() == .poweredDown, "the app answers the ACPI power button")
        print("ACPI stop took \(stopped.elapsed)")
        #expect(app.state == .halted && app.pid == nil)
        #expect(app.console().contains("outpost-app: power button"))
    }

    @Test func aReadOnlyDiskRefusesTheWrite() throws {
        let dir = try TemporaryDirectory("apps")
        let app = try Self.instance(dir.path, name: "readonly", readOnly: true)
        defer { app.close() }
        try app.start()
        try waitFor("the write refusal: \(app.console())", within: Self.boot) { app.console().contains("outpost-app: write refused") }
        #expect(BootCounter.boots(app.console()).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: app.overlayPath(0)), "a read-only image gets no overlay")
        #expect(app.waitForState(within: .seconds(5)) { $0 == .running } == .running)
    }

    @Test func aGuestThatNeverPrintsIsRunningOnceQMPSaysSo() throws {
        let dir = try TemporaryDirectory("apps")
        // A disk of zeros: SeaBIOS finds nothing to boot and the serial console stays empty.
        let path = dir.path + "/blank.raw"
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: path))
        let manifest = try BootCounter.manifest(name: "silent")
        // Nothing answers the power button either: stop ends by quit after 2 s.
        var options = Self.options(stopGrace: .seconds(2))
        options.silentConsoleGrace = .seconds(1)
        let app = try AppInstance(name: "silent", manifest: manifest,
                                  disks: [AppInstance.Disk(image: manifest.images[0], base: try BaseImage.inspect(path))],
                                  directory: dir.path + "/silent", options: options, admission: MemoryAdmission())
        defer { app.close() }
        let started = MonotonicClock.now()
        try app.start()
        #expect(app.waitForState(within: .milliseconds(800)) { $0 != .booting } == .booting, "not before the grace")
        #expect(app.waitForState(within: Self.boot) { $0 == .running } == .running)
        #expect(started.elapsed >= .seconds(1))
        #expect(app.console() == "---- outpost: QEMU start 1 ----\n", "the guest printed nothing; only the runner's marker is there")
    }

    @Test func aKilledQEMUIsRestartedOnTheSameOverlay() throws {
        let dir = try TemporaryDirectory("apps")
        let app = try Self.instance(dir.path, name: "killed")
        defer { app.close() }
        try app.start()
        try Self.waitForBoots(app, 1)
        let first = try #require(app.pid)
        #expect(kill(first, SIGKILL) == 0)
        try Self.waitForBoots(app, 2)
        #expect(BootCounter.boots(app.console()) == [1, 2])
        #expect(app.spawnCount == 2)
        #expect(app.lastExit == .signaled(SIGKILL))
        let second = try #require(app.pid)
        #expect(second != first)
        #expect(app.waitForState(within: .seconds(5)) { $0 == .running } == .running)
    }

    @Test func aQEMUThatKeepsDyingEndsBrokenAfterBoundedRestarts() throws {
        let dir = try TemporaryDirectory("apps")
        var options = Self.options()
        // A "QEMU" that exits with status 1 at once, every time (QEMU itself falls back to its
        // built-in firmware path whatever -L says, so it cannot be made to fail as reliably).
        options.qemu = "/bin/false"
        options.maxRestarts = 3
        options.restartBackoff = .milliseconds(50)
        let admission = MemoryAdmission()
        let app = try Self.instance(dir.path, name: "dying", options: options, admission: admission)
        defer { app.close() }
        let started = MonotonicClock.now()
        try app.start()
        let state = app.waitForState(within: .seconds(30)) { if case .broken = $0 { return true } else { return false } }
        print("broken after \(started.elapsed): \(state)")
        #expect(state == .broken("QEMU exited with status 1, 4 times in a row; not restarted"))
        #expect(app.spawnCount == 4, "the first start and three restarts")
        // Backoff 50 + 100 + 200 ms between the four starts.
        #expect(started.elapsed >= .milliseconds(350))
        #expect(admission.committed.isEmpty, "a broken instance gives its memory back")
    }

    @Test func stoppingAGuestThatIgnoresACPIEndsWithQuitWithinTheWait() throws {
        let dir = try TemporaryDirectory("apps")
        let grace = Duration.seconds(2)
        let app = try Self.instance(dir.path, name: "deaf", ignoreACPI: true, options: Self.options(stopGrace: grace))
        defer { app.close() }
        try app.start()
        try Self.waitForBoots(app, 1)
        let pid = try #require(app.pid)
        let started = MonotonicClock.now()
        #expect(app.stop() == .quit)
        let took = started.elapsed
        print("stop of an ACPI-deaf guest: \(took)")
        #expect(took >= grace && took < grace + .seconds(10))
        #expect(app.state == .halted && app.pid == nil)
        #expect(!processAlive(pid))
        #expect(!app.console().contains("power button"))
    }

    @Test func anAppWhoseMemoryDoesNotFitIsRefusedBeforeQEMUStarts() throws {
        let dir = try TemporaryDirectory("apps")
        let available = try MemoryModel.memAvailable()
        let app = try Self.instance(dir.path, name: "huge", memoryKiB: Int(available >> 10) + (1 << 20))
        defer { app.close() }
        #expect(throws: AppsError.self) { try app.start() }
        do { try app.start() } catch {
            print("refusal: \(error)")
            #expect(error.description.hasPrefix("app huge needs a "))
        }
        #expect(app.spawnCount == 0 && app.pid == nil && app.state == .halted)
        #expect(!FileManager.default.fileExists(atPath: app.overlayPath(0)), "nothing was prepared")
        #expect(!FileManager.default.fileExists(atPath: app.consoleLog))
    }

    @Test func aSnapshotTakenAtBootTwoBringsTheCounterBackToTwo() throws {
        let dir = try TemporaryDirectory("apps")
        let app = try Self.instance(dir.path, name: "snap")
        defer { app.close() }
        try app.start()
        try Self.waitForBoots(app, 1)
        try app.restart()
        try Self.waitForBoots(app, 2)
        var clock = MonotonicClock.now()
        try app.snapshot(.save, name: "boot-2")
        print("savevm took \(clock.elapsed)")
        #expect(app.stop() == .poweredDown)
        try app.start()
        try Self.waitForBoots(app, 3)
        #expect(BootCounter.boots(app.console()) == [1, 2, 3])
        clock = MonotonicClock.now()
        try app.snapshot(.load, name: "boot-2")
        print("loadvm took \(clock.elapsed)")
        // The disk now holds counter 2 again: the next boot is boot 3 once more.
        clock = MonotonicClock.now()
        let outcome = app.stop()
        print("stop after loadvm: \(outcome) in \(clock.elapsed)")
        try app.start()
        try Self.waitForBoots(app, 4)
        #expect(BootCounter.boots(app.console()) == [1, 2, 3, 3])
        try app.snapshot(.save, name: "boot-3")
        #expect(try app.snapshots() == ["boot-2", "boot-3"], "several named snapshots per instance")
        try app.snapshot(.delete, name: "boot-2")
        #expect(try app.snapshots() == ["boot-3"])
        #expect(throws: AppsError.qmp(socket: app.qmpSocket, command: "loadvm boot-2", reason: "no snapshot named \"boot-2\"")) {
            try app.snapshot(.load, name: "boot-2")
        }
        #expect(app.state == .running)
        #expect(app.stop() == .poweredDown, "a refused loadvm leaves the guest running, so it still answers the button")
        #expect(throws: AppsError.self) { try app.snapshot(.save, name: "bad name") }

        // Halted: qemu-img on the overlays, read back from the qcow2 snapshot table.
        #expect(app.pid == nil)
        try app.snapshot(.save, name: "halted")
        #expect(try app.snapshots() == ["boot-3", "halted"])
        let overlay = app.directory + "/disk0.qcow2"
        let listed = try sh("qemu-img", "snapshot", "-l", overlay)
        #expect(listed.contains(" boot-3 ") && listed.contains(" halted "), "qemu-img agrees with the table reader: \(listed)")
        try app.start()
        try Self.waitForBoots(app, 5)
        #expect(app.stop() == .poweredDown)
        try app.snapshot(.load, name: "halted")
        try app.start()
        try Self.waitForBoots(app, 6)
        #expect(BootCounter.boots(app.console()) == [1, 2, 3, 3, 4, 4], "the halted rollback brought the counter back to 3")
        #expect(app.stop() == .poweredDown)
        try app.snapshot(.delete, name: "halted")
        #expect(try app.snapshots() == ["boot-3"])
        #expect(throws: AppsError.qemu(app: "snap", reason: "no snapshot named \"halted\" on \(overlay)")) {
            try app.snapshot(.load, name: "halted")
        }
        #expect(try sh("qemu-img", "check", overlay).contains("No errors"), "qemu-img check after every snapshot operation")

        try FileManager.default.createDirectory(atPath: dir.path + "/fresh-dir", withIntermediateDirectories: true)
        let fresh = try Self.instance(dir.path + "/fresh-dir", name: "fresh")
        defer { fresh.close() }
        #expect(throws: AppsError.qemu(app: "fresh", reason: "has no disk yet (\(fresh.directory)/disk0.qcow2); start it once first")) {
            try fresh.snapshot(.save, name: "early")
        }
    }

    /// The snapshot table reader on damaged files: one line naming what is wrong, never a crash.
    @Test func aDamagedSnapshotTableEndsInOneLine() throws {
        let dir = try TemporaryDirectory("apps")
        let path = dir.path + "/disk.qcow2"
        _ = try sh("qemu-img", "create", "-f", "qcow2", path, "1M")
        #expect(try QCOW2Snapshots.names(path) == [])
        for tag in ["one", "second-snapshot", "3"] { _ = try sh("qemu-img", "snapshot", "-c", tag, path) }
        #expect(try QCOW2Snapshots.names(path) == ["one", "second-snapshot", "3"])
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let tableOffset = Int(bytes[64..<72].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        // A count over QEMU's limit.
        var huge = bytes
        huge.replaceSubrange(60..<64, with: [0x7f, 0xff, 0xff, 0xff])
        try Data(huge).write(to: URL(fileURLWithPath: path))
        #expect(throws: AppsError.diskImage(path: path, reason: "qcow2 nb_snapshots 2147483647 is over 65536")) { try QCOW2Snapshots.names(path) }
        // A name length that runs past the end of the file.
        bytes.replaceSubrange(tableOffset + 14..<tableOffset + 16, with: [0xff, 0xff])
        try Data(bytes.prefix(tableOffset + 60)).write(to: URL(fileURLWithPath: path))
        #expect(throws: AppsError.diskImage(path: path, reason: "qcow2 snapshot 0 at table offset 0: its name runs past the table")) {
            try QCOW2Snapshots.names(path)
        }
        // Random damage to the table: an error or names, never a crash.
        var rng = SplitMix64(seed: 7)
        for _ in 0..<300 {
            var mutated = bytes
            for _ in 0..<4 {
                let at = tableOffset + Int(rng.next() % 120)
                if at < mutated.count { mutated[at] = UInt8(truncatingIfNeeded: rng.next()) }
            }
            try Data(mutated).write(to: URL(fileURLWithPath: path))
            _ = try? QCOW2Snapshots.names(path)
        }
    }

    @Test func theKVMProbeAgreesWithBootingTheAppUnderKVM() throws {
        let dir = try TemporaryDirectory("apps")
        // The probe guest itself runs: under TCG it reaches its marker.
        #expect(KVMProbe.guestRuns(qemu: "/usr/bin/qemu-system-x86_64", firmwareDirectory: nil, scratch: dir.path,
                                   accelerator: ["-accel", "tcg"], timeout: .seconds(10), reaper: .shared))
        let probe = KVMProbe.works(qemu: "/usr/bin/qemu-system-x86_64", firmwareDirectory: nil, scratch: dir.path)
        var options = Self.options(stopGrace: .seconds(1))
        options.accelerator = .kvm
        guard FileManager.default.isReadableFile(atPath: "/dev/kvm") else {
            #expect(!probe, "no /dev/kvm, no KVM")
            return
        }
        let app = try Self.instance(dir.path, name: "kvm", options: options)
        defer { app.close() }
        try app.start()
        let booted = waitUntil(.seconds(8), every: .milliseconds(50)) { !BootCounter.boots(app.console()).isEmpty } != nil
        print("KVM probe: \(probe), boot sector under KVM printed: \(booted)")
        #expect(probe == booted)
        #expect(AcceleratorPolicy.probe.choose(qemu: "/usr/bin/qemu-system-x86_64", scratch: dir.path) == (probe ? .kvm : .defaultTCG))
    }

    /// The overhead model's evidence: the boot sector touches almost none of its RAM, so
    /// QEMU's RSS is its own overhead, which must stay within the model's overhead alone.
    @Test func qemuOwnMemoryFitsTheModelledOverhead() throws {
        let dir = try TemporaryDirectory("apps")
        for (memoryKiB, cpus) in [(65536, 1), (524288, 1), (2097152, 2)] {
            let app = try Self.instance(dir.path, name: "rss-\(memoryKiB >> 10)-\(cpus)", memoryKiB: memoryKiB, cpus: cpus)
            defer { app.close() }
            try app.start()
            try Self.waitForBoots(app, 1)
            MonotonicClock.sleep(for: .seconds(1))
            let rss = try #require(app.residentBytes)
            let overhead = MemoryModel.overhead(memoryBytes: app.manifest.memoryBytes, cpus: cpus, accelerator: app.options.accelerator)
            print("-m \(memoryKiB >> 10) MiB, \(cpus) vCPU: QEMU RSS \(rss >> 10) KiB; modelled overhead \(overhead >> 10) KiB,"
                  + " limit \(app.limits.memoryMax >> 10) KiB")
            #expect(rss <= overhead)
            app.stop()
        }
    }
}
