import Foundation
import Testing
@testable import OutpostBuilder

@Suite("PCR prediction guards against config drift")
struct MeasurementsTests {
    func inputs(stage1: String) throws -> GrubBootInputs {
        let stage2 = try String(contentsOfFile: Support.packageRoot + "/grub/stage2.cfg.in", encoding: .utf8)
            .replacingOccurrences(of: "@CMDLINE@", with: "console=ttyS0 outpost.slot=${outpost_slot_uuid}")
            .replacingOccurrences(of: "@VERSION@", with: "1.0.0")
        return GrubBootInputs(stage1Config: Array(stage1.utf8), stage2Config: Array(stage2.utf8),
                              cmdline: "console=ttyS0 outpost.slot=${outpost_slot_uuid}", version: "1.0.0",
                              kernelSHA256: String(repeating: "ab", count: 32), initrdSHA256: String(repeating: "cd", count: 32),
                              slot: GrubSlotChoice(name: "IMGA", part: "gpt2", uuid: "C8584C80-10E1-4763-AF14-5AE2F5361AF5"))
    }

    @Test func theShippedConfigsPredictDistinctPCRsPerSlotAndRescue() throws {
        let stage1 = try String(contentsOfFile: Support.packageRoot + "/grub/stage1.cfg", encoding: .utf8)
        var a = try inputs(stage1: stage1)
        let pa = try GrubMeasurements.predict(a)
        a.slot = GrubSlotChoice(name: "IMGB", part: "gpt3", uuid: "22C8635A-27BF-48CE-BBCF-BA5FEED35C72")
        let pb = try GrubMeasurements.predict(a)
        a.rescue = true
        let pr = try GrubMeasurements.predict(a)
        #expect(pa.pcr8 != pb.pcr8 && pa.pcr8 != pr.pcr8)   // the command text names the slot
        #expect(pa.pcr9 == pb.pcr9)                          // the same files are read
        #expect(pa.events.filter { $0.pcr == 9 }.count == 4) // stage 1, stage 2, kernel, initrd
    }

    @Test func aStage1MissingAModelledLineIsRefused() throws {
        let stage1 = try String(contentsOfFile: Support.packageRoot + "/grub/stage1.cfg", encoding: .utf8)
            .replacingOccurrences(of: "set timeout=0", with: "set timeout=5")
        #expect(throws: MeasurementError.self) { try GrubMeasurements.predict(try inputs(stage1: stage1)) }
    }
}
