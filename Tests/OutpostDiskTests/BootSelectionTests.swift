import Testing
@testable import OutpostDisk

@Suite("Boot selection (ARCHITECTURE.md)")
struct BootSelectionTests {
    func table(_ a: SlotAttributes, _ b: SlotAttributes) throws -> GPT {
        var g = try sampleGPT()
        g.entries[1].attributes = a.applied(to: 0)
        g.entries[2].attributes = b.applied(to: 0)
        return g
    }

    @Test func activeAndUnusedBootsTheActiveSlotWithoutWriting() throws {
        #expect(BootSelection.decide(try table(SlotState.active.attributes, SlotState.unused.attributes)) == .boot(number: 2, decrementTries: false))
    }

    @Test func updatingSlotBootsOnceAndBecomesInprogress() throws {
        let g = try table(SlotState.active.attributes, SlotState.updating.attributes)
        let d = BootSelection.decide(g)
        #expect(d == .boot(number: 3, decrementTries: true))
        #expect(BootSelection.apply(d, to: g).entries[2].slotAttributes.state == .inprogress)
        // And the next boot goes back to the committed slot: that is the fallback.
        #expect(BootSelection.decide(BootSelection.apply(d, to: g)) == .boot(number: 2, decrementTries: false))
    }

    @Test func inprogressSlotIsNotACandidate() throws {
        #expect(BootSelection.decide(try table(SlotState.active.attributes, SlotState.inprogress.attributes)) == .boot(number: 2, decrementTries: false))
    }

    @Test func equalPriorityGoesToTheLowerPartitionNumber() throws {
        let a = SlotAttributes(priority: 5, tries: 0, successful: true)
        #expect(BootSelection.decide(try table(a, a)) == .boot(number: 2, decrementTries: false))
        let t = SlotAttributes(priority: 5, tries: 3, successful: false)
        #expect(BootSelection.decide(try table(a, t)) == .boot(number: 2, decrementTries: false))
        #expect(BootSelection.decide(try table(t, a)) == .boot(number: 2, decrementTries: true))
    }

    @Test func nothingBootableIsTheDocumentedRescueOfTheLowestSlot() throws {
        let g = try table(SlotState.unused.attributes, SlotState.inprogress.attributes)
        #expect(BootSelection.decide(g) == .rescue(number: 2))
        #expect(BootSelection.apply(.rescue(number: 2), to: g) == g)
    }

    @Test func bootOnceWritesTheDecrementToBothCopies() throws {
        let dev = MemoryBlockDevice(sectorCount: 4096)
        try GPTDisk.write(try table(SlotState.active.attributes, SlotState.updating.attributes), to: dev, writeMBR: true)
        #expect(try BootSelection.bootOnce(dev) == .boot(number: 3, decrementTries: true))
        let r = try GPTDisk.read(dev)
        #expect(!r.needsRepair && r.gpt.entries[2].slotAttributes.state == .inprogress)
        #expect(try BootSelection.bootOnce(dev) == .boot(number: 2, decrementTries: false))
    }
}
