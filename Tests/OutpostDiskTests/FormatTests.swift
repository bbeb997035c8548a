import Testing
@testable import OutpostDisk

@Suite("Golden bytes of the on-disk formats")
struct FormatTests {
    @Test func crc32MatchesTheIEEECheckValue() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    @Test func guidTextRoundTripsAndUsesMixedEndianDiskOrder() throws {
        let g = try #require(GUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"))
        #expect(g.bytes == [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B])
        #expect(g.description == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
        #expect(GUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b") == g)
    }

    @Test(arguments: ["", "C12A7328F81F11D2BA4B00A0C93EC93B", "C12A7328-F81F-11D2-BA4B-00A0C93EC93", "G12A7328-F81F-11D2-BA4B-00A0C93EC93B"])
    func malformedGUIDTextIsRejected(_ text: String) {
        #expect(GUID(text) == nil)
    }

    @Test func derivedGUIDsAreStableDistinctAndVersion4() {
        let a = GUID.derived(seed: "s", purpose: "partition:IMGA")
        #expect(a == GUID.derived(seed: "s", purpose: "partition:IMGA"))
        #expect(a != GUID.derived(seed: "s", purpose: "partition:IMGB"))
        #expect(a != GUID.derived(seed: "t", purpose: "partition:IMGA"))
        #expect(a.description.split(separator: "-")[2].first == "4")
        #expect("89AB".contains(a.description.split(separator: "-")[3].first ?? "x"))
    }

    @Test func protectiveMBRGoldenBytes() {
        let mbr = ProtectiveMBR.encode(sectorCount: 2_097_152)
        #expect(mbr.count == 512)
        #expect(Array(mbr[446..<462]) == [0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF,
                                           0x01, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x1F, 0x00])
        #expect(mbr[510] == 0x55 && mbr[511] == 0xAA)
        #expect(mbr[0..<446].allSatisfy { $0 == 0 } && mbr[462..<510].allSatisfy { $0 == 0 })
        #expect(ProtectiveMBR.isProtective(mbr))
        // A disk larger than 2 TiB caps the size field at 0xFFFFFFFF.
        #expect(Array(ProtectiveMBR.encode(sectorCount: 1 << 40)[458..<462]) == [0xFF, 0xFF, 0xFF, 0xFF])
    }

    @Test func headerGoldenBytesAndRoundTrip() throws {
        let h = GPTHeader(myLBA: 1, alternateLBA: 2047, firstUsableLBA: 34, lastUsableLBA: 2014,
                          diskGUID: try #require(GUID("00112233-4455-6677-8899-AABBCCDDEEFF")),
                          entriesLBA: 2, entryCount: 128, entrySize: 128, entriesCRC32: 0xAB54_D286)
        let s = h.encode(sectorSize: 512)
        #expect(s.count == 512)
        #expect(Array(s[0..<16]) == Array("EFI PART".utf8) + [0x00, 0x00, 0x01, 0x00, 0x5C, 0x00, 0x00, 0x00])
        #expect(Array(s[24..<32]) == [1, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(s[32..<40]) == [0xFF, 0x07, 0, 0, 0, 0, 0, 0])
        #expect(Array(s[56..<72]) == [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF])
        #expect(Array(s[80..<92]) == [0x80, 0, 0, 0, 0x80, 0, 0, 0, 0x86, 0xD2, 0x54, 0xAB])
        #expect(s[92...].allSatisfy { $0 == 0 })
        var zeroed = Array(s[0..<92])
        zeroed.storeLE32(0, at: 16)
        let crc = CRC32.checksum(zeroed)
        #expect(Array(s[16..<20]) == [UInt8(crc & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 24)])
        #expect(try GPTHeader.decode(s, copy: .primary) == h)
    }

    @Test func headerWithOneFlippedBitFailsItsCRC() throws {
        let h = GPTHeader(myLBA: 1, alternateLBA: 99, firstUsableLBA: 34, lastUsableLBA: 60, diskGUID: .zero,
                          entriesLBA: 2, entryCount: 128, entrySize: 128, entriesCRC32: 0)
        var s = h.encode(sectorSize: 512)
        s[40] ^= 0x01
        #expect(throws: GPTError.self) { try GPTHeader.decode(s, copy: .backup) }
        do { _ = try GPTHeader.decode(s, copy: .backup) } catch {
            guard case .headerCRCMismatch(copy: .backup, _, _) = error else { Issue.record("wrong error \(error)"); return }
        }
    }

    @Test func entryGoldenBytesWithUTF16Name() throws {
        let e = GPTPartition(typeGUID: PartitionType.slot, uniqueGUID: .zero, firstLBA: 0x800, lastLBA: 0xFFF,
                             attributes: 0x0102_0000_0000_0000, name: "IMGA")
        let b = e.encode(entrySize: 128)
        #expect(b.count == 128)
        #expect(Array(b[0..<16]) == PartitionType.slot.bytes)
        #expect(Array(b[32..<56]) == [0, 8, 0, 0, 0, 0, 0, 0, 0xFF, 0x0F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x01])
        #expect(Array(b[56..<66]) == [0x49, 0, 0x4D, 0, 0x47, 0, 0x41, 0, 0, 0])
        #expect(GPTPartition.decode(b[...]) == e)
        let nonASCII = GPTPartition(typeGUID: PartitionType.slot, uniqueGUID: .zero, firstLBA: 1, lastLBA: 2, name: "Größe-σ")
        #expect(GPTPartition.decode(nonASCII.encode(entrySize: 128)[...]).name == "Größe-σ")
    }

    @Test func slotStatesHaveTheRawValuesOfTheContract() {
        #expect(SlotState.active.raw16 == 0x102)
        #expect(SlotState.updating.raw16 == 0x013)
        #expect(SlotState.inprogress.raw16 == 0x003)
        #expect(SlotState.unused.raw16 == 0x000)
        for s in SlotState.allCases {
            #expect(SlotAttributes(attributes: s.attributes.applied(to: 0)).state == s)
        }
    }

    @Test func applyingSlotBitsKeepsTheOtherAttributeBits() {
        let other: UInt64 = 0xFE00_0000_0000_0005   // bits 57-63 and 0, 2
        let a = SlotState.updating.attributes.applied(to: other | 0x01FF_0000_0000_0000)
        #expect(a == other | 0x0013_0000_0000_0000)
        #expect(SlotAttributes(attributes: a) == SlotState.updating.attributes)
    }
}
