import Foundation
import OutpostBundle
import OutpostDisk
import OutpostTestSupport
import OutpostUpdate
import Testing

@Suite struct EngineTests {
    let f = Fixture()
    var small: InstallOptions {
        var o = InstallOptions()
        o.chunkSize = 16 * 1024
        return o
    }

    func state(_ dev: BlockDevice, _ n: Int) throws -> SlotState? {
        try GPTDisk.read(dev).gpt.entries[n - 1].slotAttributes.state
    }

    @Test func installBootTestCommitMakesTheNewSlotActiveAndRaisesTheFloor() throws {
        let dev = try f.disk(), store = MemoryStateStore()
        let engine = f.engine(dev, store)
        let report = try engine.install(MemoryPayloadSource(try f.bundle()), booted: 1, options: small)
        #expect(report.slot == "IMGB" && report.signedBy == f.key.keyID)
        #expect(try state(dev, 2) == .updating)
        #expect(try sha(slotBytes(dev, first: Fixture.b.first, count: f.new.count)) == sha(f.new))
        #expect(try engine.afterBoot(booted: 1) == .rebootPending(slot: "IMGB"))
        #expect(try BootSelection.bootOnce(dev) == .boot(number: 2, decrementTries: true))
        #expect(try engine.afterBoot(booted: 2) == .testing(slot: "IMGB", version: "2.0.0"))
        try engine.commit(booted: 2)
        #expect(try state(dev, 2) == .active && state(dev, 1) == .unused)
        #expect(store.state.securityFloor == 3 && store.state.committedVersion == "2.0.0")
        #expect(store.state.lastResult?.outcome == .committed && store.state.pending == nil)
        #expect(try BootSelection.bootOnce(dev) == .boot(number: 2, decrementTries: false))
        #expect(try engine.afterBoot(booted: 2) == .idle(slot: "IMGB"))
        // The floor now refuses an older security version.
        let older = try f.bundle(version: "1.5.0", security: 2)
        #expect(throws: UpdateError.bundle(.securityVersionBelowFloor(version: 2, floor: 3))) {
            try engine.install(MemoryPayloadSource(older), booted: 2, options: small)
        }
    }

    @Test func aFailedTestFallsBackRecordsTheReasonAndRefusesThatVersionAgain() throws {
        let dev = try f.disk(), store = MemoryStateStore()
        let engine = f.engine(dev, store)
        let bundle = try f.bundle()
        try engine.install(MemoryPayloadSource(bundle), booted: 1, options: small)
        #expect(try BootSelection.bootOnce(dev).number == 2)
        try engine.recordTestFailure(booted: 2, reason: "component 'app' unhealthy")
        // Reboot: IMGB has no tries and is not successful, so GRUB returns to IMGA by itself.
        #expect(try BootSelection.bootOnce(dev) == .boot(number: 1, decrementTries: false))
        #expect(try engine.afterBoot(booted: 1) == .fellBack(failedSlot: "IMGB", version: "2.0.0", reason: "component 'app' unhealthy"))
        #expect(try state(dev, 1) == .active && state(dev, 2) == .unused)
        #expect(store.state.failed == [.init(version: "2.0.0", slot: "IMGB", reason: "component 'app' unhealthy")])
        #expect(store.state.securityFloor == 0)
        #expect(try slotBytes(dev, first: Fixture.a.first, count: f.old.count) == f.old)
        #expect(throws: UpdateError.previouslyFailed(version: "2.0.0", reason: "component 'app' unhealthy")) {
            try engine.install(MemoryPayloadSource(bundle), booted: 1, options: small)
        }
        var forced = small
        forced.force = true
        try engine.install(MemoryPayloadSource(bundle), booted: 1, options: forced)
        #expect(try state(dev, 2) == .updating)
    }

    @Test func aPanickingKernelFallsBackWithAGenericReason() throws {
        let dev = try f.disk(), store = MemoryStateStore()
        let engine = f.engine(dev, store)
        try engine.install(MemoryPayloadSource(try f.bundle()), booted: 1, options: small)
        #expect(try BootSelection.bootOnce(dev).number == 2)  // the new kernel panics: the agent never runs
        #expect(try BootSelection.bootOnce(dev).number == 1)
        guard case .fellBack(_, "2.0.0", _) = try engine.afterBoot(booted: 1) else {
            Issue.record("fallback not detected")
            return
        }
        #expect(store.state.failed.count == 1)
    }

    @Test func refusedBundlesWriteNothingAndLeaveTheActiveSlotUnchanged() throws {
        let good = try f.bundle()
        let other = SigningKey.generate()
        let offset = Int(try BundlePrologue.read(from: MemoryPayloadSource(good)).header.payloadOffset)
        var cases: [(String, [UInt8], TrustStore)] = [
            ("wrong key", try f.bundle(keys: [other]), f.trust),
            ("revoked key", good, TrustStore(anchors: [f.key.key.publicKey], revoked: [f.key.keyID])),
            ("lower security version", try f.bundle(security: 0), f.trust),
            ("truncated", Array(good.dropLast(1)), f.trust),
            ("truncated header", Array(good.prefix(40)), f.trust),
            ("payload larger than the slot", try f.bundle(payload: randomBytes(301 * 1024, seed: 9)), f.trust),
        ]
        for pos in [0, 9, 17, 30, 63, 64, 100, offset - 4096 + 200, offset - 1, offset, offset + 1000, good.count - 1] {
            var t = good
            t[pos] ^= 0x20
            cases.append(("flipped byte at \(pos)", t, f.trust))
        }
        // Raise the floor to 1 so "security 0" is below it.
        var floor = DeviceUpdateState()
        floor.securityFloor = 1
        for (name, bytes, trust) in cases {
            let disk = try f.disk()
            let before = disk.storage
            let dev = CountingDevice(disk)
            let store = MemoryStateStore(floor)
            #expect(throws: UpdateError.self, "\(name)") {
                try f.engine(dev, store, trust: trust).install(MemoryPayloadSource(bytes), booted: 1, options: small)
            }
            #expect(dev.writes == 0, "\(name): \(dev.writes) writes")
            #expect(disk.storage == before, "\(name): disk changed")
            #expect(store.state.lastResult?.outcome == .refused, "\(name)")
        }
    }

    @Test func installingFromAnUncommittedBootIsRefused() throws {
        let dev = try f.disk(), store = MemoryStateStore()
        let engine = f.engine(dev, store)
        try engine.install(MemoryPayloadSource(try f.bundle()), booted: 1, options: small)
        _ = try BootSelection.bootOnce(dev)
        #expect(throws: UpdateError.uncommittedBoot(slot: "IMGB")) {
            try engine.install(MemoryPayloadSource(try f.bundle(version: "3.0.0")), booted: 2, options: small)
        }
    }

    @Test func directoryStateStoreRoundTripsAtomically() throws {
        let dir = try TemporaryDirectory.create("state")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = DirectoryStateStore(directory: dir)
        #expect(try store.load() == DeviceUpdateState())
        var s = DeviceUpdateState()
        s.securityFloor = 9
        s.failed = [.init(version: "3.0.0", slot: "IMGA", reason: "health")]
        try store.save(s)
        #expect(try DirectoryStateStore(directory: dir).load() == s)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["update-state.json"])
        try "{".write(toFile: store.path, atomically: true, encoding: .utf8)
        #expect(throws: UpdateError.self) { try store.load() }
    }
}
