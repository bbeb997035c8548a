import Testing
@testable import OutpostDisk

/// A small deterministic PRNG so a failing case can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("The GPT reader never crashes on hostile input")
struct FuzzTests {
    @Test func randomDisksEndInAnErrorOrATableNeverACrash() throws {
        var rng = SplitMix64(state: 0x0057_5057)
        for _ in 0..<300 {
            let sectors = Int.random(in: 0...200, using: &rng)
            let bytes = (0..<sectors * 512).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? GPTDisk.read(MemoryBlockDevice(bytes: bytes))
        }
    }

    /// Random mutations of a valid table with the CRCs fixed up afterwards,
    /// so the parser's field checks (not just the CRC) see hostile values.
    @Test func mutatedTablesWithValidCRCsNeverCrash() throws {
        var rng = SplitMix64(state: 42)
        let base = MemoryBlockDevice(sectorCount: 4096)
        try GPTDisk.write(try sampleGPT(), to: base, writeMBR: true)
        var accepted = 0
        for _ in 0..<2000 {
            var disk = base.storage
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                let off = Bool.random(using: &rng) ? Int.random(in: 512..<1024, using: &rng) : Int.random(in: 1024..<(34 * 512), using: &rng)
                disk[off] = UInt8.random(in: 0...255, using: &rng)
            }
            // Re-seal the primary: entries CRC over the claimed array, then header CRC.
            let hsize = Int(min(512, max(92, UInt32(disk[524]) | UInt32(disk[525]) << 8)))
            let count = Int(UInt32(disk[512 + 80]) | UInt32(disk[512 + 81]) << 8)
            let size = Int(UInt32(disk[512 + 84]) | UInt32(disk[512 + 85]) << 8)
            if count * size <= 32 * 512 {
                disk.storeLE32(CRC32.checksum(disk[1024..<(1024 + count * size)]), at: 512 + 88)
            }
            disk.storeLE32(0, at: 512 + 16)
            disk.storeLE32(CRC32.checksum(disk[512..<(512 + hsize)]), at: 512 + 16)
            if let r = try? GPTDisk.read(MemoryBlockDevice(bytes: disk)) {
                accepted += 1
                _ = BootSelection.decide(r.gpt)
            }
        }
        #expect(accepted > 0)   // the harness really reaches the field checks
    }
}
