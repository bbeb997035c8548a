// /persist/status/boot.json: what this boot was. The slot, the version, and
// the PCR 8/9 values GRUB left in the TPM, so that the measured boot can be
// compared with the builder's out/measurements.json (by a test today, by
// the controller's attestation later).

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot

/// The record of one boot, written once PERSIST is mounted.
public struct BootRecord: Equatable, Sendable {
    public var slot: String
    public var partUUID: String
    public var version: String
    public var rescueReason: String?
    /// PCR index → lower-case hex digest (SHA-256 bank); empty without a TPM.
    public var pcrs: [Int: String]

    public static let directory = "/persist/status"
    public static let path = directory + "/boot.json"
    static let pcrIndexes = [8, 9]

    /// Reads the SHA-256 PCRs the kernel exposes (tpm_tis, kernel ≥ 5.12).
    /// A missing TPM is not an error: the record then has no PCRs.
    public static func readPCRs(sysfs: String = "/sys/class/tpm/tpm0/pcr-sha256") -> [Int: String] {
        var out: [Int: String] = [:]
        for i in pcrIndexes {
            if let text = try? Sys.readText("\(sysfs)/\(i)") {
                out[i] = text.trimmingCharacters(in: " \n").lowercased()
            }
        }
        return out
    }

    /// The JSON text, keys sorted, so the file is stable and diffable.
    public var json: String {
        // Only a non-finite number can fail to encode, and this document holds none.
        ((try? JSONDocument.indented(self)) ?? "{}") + "\n"
    }

    /// Writes the record atomically: temp file, fsync, rename, fsync the directory.
    public func write(directory: String = BootRecord.directory) throws(SystemError) {
        try? Sys.mkdir(directory, 0o755)
        try FileIO.writeAtomically(Array(json.utf8), to: directory + "/boot.json", mode: 0o644)
    }
}

extension BootRecord: Encodable {
    private enum Keys: String, CodingKey { case partuuid, pcr, rescue, slot, version }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(partUUID, forKey: .partuuid)
        // Keys "8", "9": JSON object keys are strings.
        try container.encode(pcrs, forKey: .pcr)
        try container.encode(rescueReason, forKey: .rescue)
        try container.encode(slot, forKey: .slot)
        try container.encode(version, forKey: .version)
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
