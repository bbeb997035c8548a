import OutpostBundle
import OutpostDisk
import OutpostUpdate
import Testing

// The deterministic power-cut simulation of issue 4: the whole update
// sequence runs against a disk that dies during its k-th write, for every k,
// with and without a torn write. After each cut the disk is "rebooted": the
// GPT is repaired and read with OutpostDisk, the Swift boot selection picks a
// slot, and that slot must hold a verified payload; then the device goes on
// (GRUB's decrement, the agent's afterBoot, commit) and must end with one
// committed slot whose content verifies.

@Suite struct PowerCutTests {
    enum Path: CaseIterable { case commit, fallback }

    let f = Fixture()

    /// install → reboot (GRUB decrement) → afterBoot → commit, or test failure → reboot → fallback.
    func sequence(_ dev: BlockDevice, _ store: MemoryStateStore, _ path: Path, bundle: [UInt8]) throws {
        var o = InstallOptions()
        o.chunkSize = 4 * 1024
        let engine = f.engine(dev, store)
        try engine.install(MemoryPayloadSource(bundle), booted: Fixture.a.number, options: o)
        let first = try BootSelection.bootOnce(dev)
        guard let n = first.number, try engine.afterBoot(booted: n) == .testing(slot: "IMGB", version: "2.0.0") else {
            throw UpdateError.slotLayout("unexpected first boot \(first)")
        }
        switch path {
        case .commit:
            try engine.commit(booted: n)
        case .fallback:
            try engine.recordTestFailure(booted: n, reason: "health check failed")
            let again = try BootSelection.bootOnce(dev)
            _ = try engine.afterBoot(booted: again.number ?? 0)
        }
    }

    /// The slot the boot selection picks on `dev` holds the payload promised for it.
    func checkBootable(_ dev: BlockDevice, context: String) throws -> Int {
        let decision = BootSelection.decide(try GPTDisk.read(dev).gpt)
        guard case let .boot(n, _) = decision else {
            Issue.record("\(context): no bootable slot (\(decision))")
            return 0
        }
        if n == Fixture.a.number {
            #expect(try sha(slotBytes(dev, first: Fixture.a.first, count: f.old.count)) == sha(f.old), "\(context): IMGA chosen but does not verify")
        } else {
            #expect(try sha(slotBytes(dev, first: Fixture.b.first, count: f.new.count)) == sha(f.new), "\(context): IMGB chosen but does not verify")
        }
        return n
    }

    @Test func everyPowerCutPointLeavesABootableVerifiedSlot() throws {
        let bundle = try f.bundle()
        var covered = 0
        for path in Path.allCases {
            // A run without a cut counts the writes of the whole sequence.
            let probe = PowerCutDevice(try f.disk(), cutAt: nil, tear: false)
            try sequence(probe, MemoryStateStore(), path, bundle: bundle)
            let total = probe.writes
            #expect(total > 40)
            for tear in [false, true] {
                for k in 0...total {
                    let context = "\(path) cut at write \(k)/\(total)\(tear ? " (torn)" : "")"
                    let disk = try f.disk()
                    let store = MemoryStateStore()
                    let dev = PowerCutDevice(disk, cutAt: k, tear: tear)
                    do {
                        try sequence(dev, store, path, bundle: bundle)
                        #expect(k == total, "\(context): sequence finished without reaching the cut")
                    } catch {
                        #expect(dev.cut, "\(context): failed without a cut: \(error)")
                    }
                    try recoverAndCheck(MemoryBlockDevice(bytes: disk.storage), store, context: context)
                    covered += 1
                }
            }
        }
        print("power-cut points covered: \(covered)")
        #expect(covered >= 280)
    }

    /// Power back on: repair the table, check the choice, then boot and run the agent to a committed state.
    func recoverAndCheck(_ dev: MemoryBlockDevice, _ store: MemoryStateStore, context: String) throws {
        try GPTDisk.repair(dev)
        #expect(try GPTDisk.read(dev).needsRepair == false, "\(context): repair left a damaged copy")
        let chosen = try checkBootable(dev, context: context)
        // IMGA is never written by the engine: it is intact whatever was chosen.
        #expect(try slotBytes(dev, first: Fixture.a.first, count: f.old.count) == f.old, "\(context): IMGA changed")

        let engine = f.engine(dev, store)
        let booted = try BootSelection.bootOnce(dev)
        #expect(booted.number == chosen, "\(context): decide and bootOnce disagree")
        if case .testing = try engine.afterBoot(booted: chosen) { try engine.commit(booted: chosen) }
        let final = try GPTDisk.read(dev).gpt
        let states = [Fixture.a.number, Fixture.b.number].map { final.entries[$0 - 1].slotAttributes.state }
        #expect(states.filter { $0 == .active }.count == 1, "\(context): end states \(states)")
        #expect(!states.contains(.inprogress) && !states.contains(.updating) || states.contains(.updating),
                "\(context): end states \(states)")
        _ = try checkBootable(dev, context: context + ", after recovery")
        #expect(store.state.pending == nil || states[1] == .updating, "\(context): pending left over")
    }
}
