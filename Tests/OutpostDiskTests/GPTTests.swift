import Testing
@testable import OutpostDisk

/// A device that records the order of writes, to prove backup-before-primary.
final class RecordingDevice: BlockDevice {
    let inner: MemoryBlockDevice
    var writes: [UInt64] = []
    var flushes: [Int] = []
    init(_ inner: MemoryBlockDevice) { self.inner = inner }
    var sectorSize: Int { inner.sectorSize }
    var sectorCount: UInt64 { inner.sectorCount }
    func read(lba: UInt64, count: Int) throws -> [UInt8] { try inner.read(lba: lba, count: count) }
    func write(lba: UInt64, bytes: [UInt8]) throws { writes.append(lba); try inner.write(lba: lba, bytes: bytes) }
    func flush() throws { flushes.append(writes.count) }
}

func sampleGPT(sectors: UInt64 = 4096) throws -> GPT {
    var gpt = try GPT.empty(sectorCount: sectors, diskGUID: GUID.derived(seed: "test", purpose: "disk"))
    let parts: [(String, GUID, UInt64, UInt64, SlotState?)] = [
        ("EFI", PartitionType.efiSystem, 2048, 2303, nil),
        ("IMGA", PartitionType.slot, 2304, 2815, .active),
        ("IMGB", PartitionType.slot, 2816, 3327, .unused),
        ("CONFIG", PartitionType.config, 3328, 3583, nil),
        ("PERSIST", PartitionType.persist, 3584, 4000, nil),
    ]
    for (i, p) in parts.enumerated() {
        gpt.entries[i] = GPTPartition(typeGUID: p.1, uniqueGUID: GUID.derived(seed: "test", purpose: p.0),
                                      firstLBA: p.2, lastLBA: p.3, attributes: p.4.map { $0.attributes.applied(to: 0) } ?? 0, name: p.0)
    }
    return gpt
}

@Suite("GPT read, validate, repair and write")
struct GPTTests {
    @Test func writtenTableReadsBackIdenticallyWithBothCopiesValid() throws {
        let dev = MemoryBlockDevice(sectorCount: 4096)
        let gpt = try sampleGPT()
        try GPTDisk.write(gpt, to: dev, writeMBR: true)
        let r = try GPTDisk.read(dev)
        #expect(r.gpt == gpt)
        #expect(r.primary == .valid && r.backup == .valid && r.protectiveMBR && !r.needsRepair)
        #expect(r.gpt.partitions.map(\.partition.name) == ["EFI", "IMGA", "IMGB", "CONFIG", "PERSIST"])
    }

    @Test func writeGoesBackupFirstThenPrimaryWithAFlushBetween() throws {
        let dev = RecordingDevice(MemoryBlockDevice(sectorCount: 4096))
        try GPTDisk.write(try sampleGPT(), to: dev)
        #expect(dev.writes == [4095 - 32, 4095, 2, 1])
        #expect(dev.flushes == [2, 4])
    }

    @Test func corruptPrimaryIsReadThroughTheBackupAndRepaired() throws {
        let dev = MemoryBlockDevice(sectorCount: 4096)
        let gpt = try sampleGPT()
        try GPTDisk.write(gpt, to: dev, writeMBR: true)
        let pristine = dev.storage
        var hdr = try dev.read(lba: 1, count: 1)
        hdr[30] ^= 0xFF
        try dev.write(lba: 1, bytes: hdr)
        let r = try GPTDisk.read(dev)
        #expect(r.source == .backup && r.gpt == gpt)
        guard case .invalid(.headerCRCMismatch(copy: .primary, _, _)) = r.primary else {
            Issue.record("primary should be invalid with a CRC mismatch, was \(r.primary)"); return
        }
        try GPTDisk.repair(dev)
        #expect(dev.storage == pristine)
    }

    @Test func corruptBackupEntriesAreRestoredFromThePrimary() throws {
        let dev = MemoryBlockDevice(sectorCount: 4096)
        try GPTDisk.write(try sampleGPT(), to: dev, writeMBR: true)
        let pristine = dev.storage
        var entries = try dev.read(lba: 4095 - 32, count: 1)
        entries[200] ^= 0x40
        try dev.write(lba: 4095 - 32, bytes: entries)
        let r = try GPTDisk.read(dev)
        guard case .invalid(.entriesCRCMismatch(copy: .backup, _, _)) = r.backup else {
            Issue.record("backup should be invalid, was \(r.backup)"); return
        }
        #expect(r.source == .primary)
        try GPTDisk.repair(dev)
        #expect(dev.storage == pristine)
    }

    @Test func bothCopiesCorruptIsAClearError() throws {
        let dev = MemoryBlockDevice(sectorCount: 4096)
        try GPTDisk.write(try sampleGPT(), to: dev, writeMBR: true)
        try dev.write(lba: 1, bytes: [UInt8](repeating: 0, count: 512))
        try dev.write(lba: 4095, bytes: [UInt8](repeating: 0xAA, count: 512))
        #expect(throws: GPTError.self) { try GPTDisk.read(dev) }
        do { _ = try GPTDisk.read(dev) } catch let e as GPTError {
            #expect("\(e)".contains("no valid GPT: primary:"))
            #expect("\(e)".contains("backup"))
        }
    }

    @Test func aWriteInterruptedBetweenCopiesLeavesAValidTableAndAStaleBackup() throws {
        let dev = MemoryBlockDevice(sectorCount: 4096)
        var gpt = try sampleGPT()
        try GPTDisk.write(gpt, to: dev, writeMBR: true)
        let old = gpt
        try gpt.setSlot("IMGB", to: .updating)
        // Emulate a cut after the backup copy: write only the backup half.
        let (_, backup) = gpt.headers(backupLBA: 4095, sectorSize: 512)
        try dev.write(lba: backup.entriesLBA, bytes: gpt.encodedEntries(sectorSize: 512))
        try dev.write(lba: 4095, bytes: backup.encode(sectorSize: 512))
        let r = try GPTDisk.read(dev)
        #expect(r.gpt == old && r.backup == .stale)
        try GPTDisk.repair(dev)
        let after = try GPTDisk.read(dev)
        #expect(after.gpt == old && !after.needsRepair)
    }

    @Test func backupIsFoundThroughThePrimaryAfterTheDiskGrew() throws {
        let small = MemoryBlockDevice(sectorCount: 4096)
        try GPTDisk.write(try sampleGPT(), to: small, writeMBR: true)
        let grown = MemoryBlockDevice(bytes: small.storage + [UInt8](repeating: 0, count: 512 * 4096))
        let r = try GPTDisk.read(grown)
        #expect(r.backupLBA == 4095 && r.backup == .valid)
    }

    @Test func tooSmallDeviceIsRejected() {
        #expect(throws: GPTError.self) { try GPTDisk.read(MemoryBlockDevice(sectorCount: 10)) }
        #expect(throws: GPTError.self) { try GPT.empty(sectorCount: 40, diskGUID: .zero) }
    }
}
