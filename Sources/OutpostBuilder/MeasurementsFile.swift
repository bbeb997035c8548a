import Foundation
import OutpostDisk

/// `out/measurements.json`: the PCR 8 and PCR 9 values (SHA-256 bank) a
/// device will hold after GRUB boots each slot of the image, predicted from
/// what the builder wrote. Used to seal secrets and to verify attestation.
public struct MeasurementsFile: Codable, Sendable {
    public struct Slot: Codable, Sendable {
        public var partition: String
        public var partuuid: String
        public var pcr8: String
        public var pcr9: String
    }
    public var algorithm = "sha256"
    public var version: String
    public var rootHash: String
    /// Normal boots, by slot name.
    public var slots: [String: Slot]
    /// The rescue boot of the lowest slot, when no slot qualifies.
    public var rescue: Slot?

    /// Predicts every slot's PCRs, assuming the slot holds the payload the
    /// manifest describes (true for IMGA at build time, and for IMGB after an
    /// update with the same payload).
    public static func predict(gpt: GPT, manifest: SlotManifest, stage1: [UInt8]) throws -> MeasurementsFile {
        let stage2 = Array(manifest.grubCfg.utf8)
        func one(_ n: Int, _ p: GPTPartition, rescue: Bool) throws -> Slot {
            let choice = GrubSlotChoice(name: p.name, part: "gpt\(n)", uuid: p.uniqueGUID.description)
            let pred = try GrubMeasurements.predict(GrubBootInputs(
                stage1Config: stage1, stage2Config: stage2, cmdline: manifest.cmdline, version: manifest.version,
                kernelSHA256: manifest.kernelSHA256, initrdSHA256: manifest.initrdSHA256, slot: choice, rescue: rescue))
            return Slot(partition: choice.part, partuuid: choice.uuid, pcr8: pred.pcr8Hex, pcr9: pred.pcr9Hex)
        }
        var slots: [String: Slot] = [:]
        let slotParts = gpt.partitions.filter { $0.partition.isSlot }
        for (n, p) in slotParts { slots[p.name] = try one(n, p, rescue: false) }
        let rescue = try slotParts.first.map { try one($0.number, $0.partition, rescue: true) }
        return MeasurementsFile(version: manifest.version, rootHash: manifest.rootHash, slots: slots, rescue: rescue)
    }

    public func write(to path: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(self).write(to: URL(fileURLWithPath: path))
    }
}
