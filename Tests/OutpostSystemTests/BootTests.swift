import Foundation
import Testing
import OutpostDisk

/// The image boots for real, GRUB's slot choice agrees with the Swift boot
/// selection in every case of ARCHITECTURE.md, the TPM holds the predicted
/// PCRs, and dm-verity stops a tampered root.
extension QEMU {
    @Suite("Booting the image in QEMU", .serialized)
    struct BootTests {
        /// Boots once and checks what GRUB did against BootSelection's prediction.
        /// `retired` names a slot the agent itself sets to unused after the boot:
        /// the fallback bookkeeping of the update flow (ARCHITECTURE.md, step 5).
        func bootAndCompare(_ h: Harness, expect: String, retired: String? = nil,
                            until: [String] = ["outpost: ready", "outpost: error:", "outpost: rescue"]) throws -> Harness.Boot {
            let before = try h.gpt()
            let decision = BootSelection.decide(before)
            let predicted = decision.number.map { before.entries[$0 - 1].name }
            #expect(predicted == expect, "Swift predicts \(predicted ?? "-")")
            // After the marker the guest is powered off cleanly (ACPI power button).
            let boot = try h.boot(until: until, powerOff: true)
            #expect(boot.grubSlot == expect, "GRUB booted \(boot.grubSlot ?? "nothing"); console:\n\(boot.console.suffix(3000))")
            // The slot attributes after boot are exactly the predicted ones.
            let after = try h.gpt()
            var expected = BootSelection.apply(decision, to: before)
            if let retired { try expected.setSlot(retired, to: .unused) }
            for (n, p) in expected.partitions where p.isSlot {
                #expect(after.entries[n - 1].attributes == p.attributes, "\(p.name) attributes")
            }
            return boot
        }

        @Test func slotSelectionAgreesWithGRUBInEveryCaseAndTheTPMHoldsThePredictedPCRs() throws {
            let h = try Harness("select")
            defer { h.cleanup() }
            let m = try Harness.measurements()

            // (a) IMGA active, IMGB unused → IMGA; the slot attributes are untouched.
            let factory = try h.gpt()
            #expect(try h.cgptAttr(2) == "0x102")
            #expect(try h.cgptAttr(3) == "0")
            let a = try bootAndCompare(h, expect: "IMGA")
            #expect(a.exitCode == 0 && a.line(containing: "outpost: ready slot=IMGA version=") != nil, "\(a.console.suffix(3000))")
            #expect(try h.cgptAttr(2) == "0x102")
            #expect(try h.cgptAttr(3) == "0")
            // First boot grew PERSIST to the end of the disk, and sgdisk agrees with the result.
            let grown = try h.gpt()
            let persist = try #require(factory.number(named: "PERSIST"))
            #expect(grown.entries[persist - 1].lastLBA > factory.entries[persist - 1].lastLBA)
            #expect(try Harness.sh(["sgdisk", "-v", h.image]).stdout.contains("No problems found"))
            let pcrA = try h.persistFile("/status/boot.json")
            #expect(pcrA.contains(m.slots["IMGA"]?.pcr8.lowercased() ?? "missing"), "PCR 8 of IMGA: \(pcrA)")
            #expect(pcrA.contains(m.slots["IMGA"]?.pcr9.lowercased() ?? "missing"), "PCR 9 of IMGA: \(pcrA)")
            // A second boot of (a) leaves the GPT byte-identical (first boot grew PERSIST).
            let gptBytes = { () throws -> [UInt8] in
                let d = try FileBlockDevice(path: h.image, writable: false)
                return try d.read(lba: 0, count: 34) + d.read(lba: d.sectorCount - 33, count: 33)
            }
            let snapshot = try gptBytes()
            let a2 = try bootAndCompare(h, expect: "IMGA")
            #expect(a2.ready)
            #expect(try gptBytes() == snapshot)

            // (b) IMGB updating → IMGB boots once and is then inprogress (tries 0).
            try h.copyIMGAtoIMGB()
            try h.cgptSet(3, "0x013")
            let b = try bootAndCompare(h, expect: "IMGB")
            #expect(b.line(containing: "outpost: ready slot=IMGB") != nil, "\(b.console.suffix(3000))")
            #expect(try h.cgptAttr(3) == "0x3")
            let pcrB = try h.persistFile("/status/boot.json")
            #expect(pcrB.contains(m.slots["IMGB"]?.pcr8.lowercased() ?? "missing"), "PCR 8 of IMGB: \(pcrB)")
            #expect(pcrB.contains(m.slots["IMGB"]?.pcr9.lowercased() ?? "missing"), "PCR 9 of IMGB: \(pcrB)")

            // (c) IMGB inprogress, IMGA active → GRUB boots IMGA (the fallback) and
            // writes nothing; the agent then records the fallback and retires IMGB.
            let c = try bootAndCompare(h, expect: "IMGA", retired: "IMGB")
            #expect(c.ready)
            #expect(c.line(containing: "update: fell back from IMGB") != nil, "\(c.console.suffix(3000))")
            #expect(try h.cgptAttr(3) == "0")

            // (d) equal priority, both bootable → the lower partition number.
            try h.cgptSet(3, "0x102")
            let d = try bootAndCompare(h, expect: "IMGA")
            #expect(d.ready)

            // (e) nothing bootable → the documented rescue: IMGA, GPT untouched.
            try h.cgptSet(2, "0x0")
            try h.cgptSet(3, "0x3")
            let e = try bootAndCompare(h, expect: "IMGA")
            #expect(e.line(containing: "outpost: rescue slot=IMGA reason=no-bootable-slot") != nil, "\(e.console.suffix(3000))")
            #expect(!e.ready)
            #expect(try h.cgptAttr(2) == "0")
            #expect(try h.cgptAttr(3) == "0x3")
            let v = try Harness.sh(["sgdisk", "-v", h.image])
            #expect(v.stdout.contains("No problems found"))
        }

        @Test func aFlippedByteInTheRootIsCaughtByDmVerity() throws {
            let h = try Harness("verity")
            defer { h.cleanup() }
            let m = try Harness.slotManifest()
            let g = try h.gpt()
            let imga = try #require(g.number(named: "IMGA"))
            // Flip one byte in the middle of the root squashfs (inside IMGA).
            let offset = g.entries[imga - 1].firstLBA * 512 + m.rootOffset + m.rootDataBlocks * 4096 / 2 + 123
            let dev = try FileBlockDevice(path: h.image, writable: true)
            var byte = try dev.readBytes(offset: offset, count: 1)
            byte[0] ^= 0xFF
            try dev.writeBytes(offset: offset, bytes: byte)
            try dev.flush()
            let boot = try h.boot()
            #expect(!boot.ready, "booted as if healthy:\n\(boot.console.suffix(3000))")
            let err = boot.line(containing: "outpost: error:")
            #expect(err != nil, "no clear error:\n\(boot.console.suffix(3000))")
            #expect(err?.contains("verity") == true, "\(err ?? "")")
        }
    }
}
