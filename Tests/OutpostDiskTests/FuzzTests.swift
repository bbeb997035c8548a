import OutpostTestSupport
import Testing
@testable import OutpostDisk

@Suite("The GPT reader never crashes on hostile input")
struct FuzzTests {
    /// Random disks, one in eight carrying a freshly written empty table over random bytes:
    /// those must read back, the rest must end in an error, and nothing may crash.
    @Test func randomDisksEndInAnErrorOrATableNeverACrash() throws {
        var rng = SplitMix64.forTest()
        var accepted = 0, refused = 0
        for i in 0..<300 {
            let sectors = Int.random(in: 0...200, using: &rng)
            let dev = MemoryBlockDevice(bytes: rng.bytes(sectors * 512))
            let sealed = i % 8 == 0 && sectors >= 68
            if sealed {
                try GPTDisk.write(try GPT.empty(sectorCount: UInt64(sectors), diskGUID: GUID(diskBytes: rng.bytes(16))), to: dev, writeMBR: true)
            }
            if (try? GPTDisk.read(dev)) != nil {
                accepted += 1
            } else {
                refused += 1
                #expect(!sealed, "a freshly written table on \(sectors) sectors was refused (seed \(rng.seed))")
            }
        }
        #expect(accepted > 0 && refused > 0, "accepted \(accepted), refused \(refused) (seed \(rng.seed))")
    }

    /// Random mutations of a valid table with the CRCs fixed up afterwards,
    /// so the parser's field checks (not just the CRC) see hostile values.
    @Test func mutatedTablesWithValidCRCsNeverCrash() throws {
        var rng = SplitMix64.forTest()
        let base = MemoryBlockDevice(sectorCount: 4096)
        try GPTDisk.write(try sampleGPT(), to: base, writeMBR: true)
        // The intact backup always rescues the table, so what the field checks accept or refuse
        // shows in the primary copy's health.
        var accepted = 0, primaryValid = 0, primaryRefused = 0
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
                if r.primary == .valid { primaryValid += 1 } else { primaryRefused += 1 }
            }
        }
        #expect(accepted > 0)   // the harness really reaches the field checks
        #expect(primaryValid > 0 && primaryRefused > 0,
                "primary accepted \(primaryValid), refused \(primaryRefused) (seed \(rng.seed))")
    }
}
