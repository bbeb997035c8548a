import Foundation
import OutpostBundle

/// `GET /devices/REF/attestation` and `POST /devices/REF/attestation-reset`: a device's TPM
/// keys and its last quote, with every part `tpm2_checkquote` reads as hex, so an operator
/// can check the controller's verdict with an independent tool:
///
///     files.message    -m  TPMS_ATTEST
///     files.signature  -s  TPMT_SIGNATURE (0018 000b 0020 r 0020 s)
///     files.akPublic   -u  the AK's TPM2B_PUBLIC
///     files.pcrs       -f  the PCR values concatenated in pcrList order, with -l pcrList
///     nonce            -q  the nonce
extension AdminRoutes {
    func deviceAttestation(_ ref: String) async throws -> Any {
        let d = try await fleet.resolve(ref)
        var o: [String: Any] = ["device": d.id]
        guard let key = try await fleet.store.attestationKey(deviceID: d.id) else {
            o["identity"] = "file"
            o["attested"] = false
            o["note"] = "no TPM keys registered (file identity): the device is not attested and gets its whole config"
            return o
        }
        o["identity"] = "tpm"
        o["ekCertificate"] = key.ekCertificateStatus ?? (key.ekCertificate.isEmpty ? EKCertificate.noCertificate : "not checked: registered before EK certificates were checked")
        o["key"] = [
            "ekPublic": hex(key.ekPublic), "akPublic": hex(key.akPublic), "ekCertificate": hex(key.ekCertificate),
            "bound": key.boundMs > 0, "boundAt": key.boundMs > 0 ? Views.iso(key.boundMs) : NSNull(),
            "firstUsePCRs": key.firstUse,
        ] as [String: Any]
        guard let r = try await fleet.store.attestation(deviceID: d.id) else {
            o["attested"] = false
            o["last"] = NSNull()
            return o
        }
        o["attested"] = r.passed
        let indexes = r.pcrs.keys.compactMap { Int($0) }.sorted()
        let signature: [UInt8] = [0x00, 0x18, 0x00, 0x0B] + Self.tpm2b(Array(r.signatureR)) + Self.tpm2b(Array(r.signatureS))
        o["last"] = [
            "passed": r.passed, "reason": r.reason, "received": Views.iso(r.receivedMs),
            "mismatches": r.mismatches.map { ["pcr": $0.index, "expected": $0.expected, "actual": $0.actual] as [String: Any] },
            "slot": r.slot, "osVersion": r.osVersion, "nonce": hex(r.nonce),
            "board": r.board ?? "", "firmwareReference": r.firmwareReference ?? "",
            "pcrs": r.pcrs, "pcrList": "sha256:" + indexes.map(String.init).joined(separator: ","),
            "eventLogGzip": r.eventLog.base64EncodedString(),
            "files": [
                "message": hex(r.attest), "signature": hex(signature), "akPublic": hex(r.akPublic),
                "pcrs": indexes.map { r.pcrs[String($0)] ?? "" }.joined(),
            ],
        ] as [String: Any]
        return o
    }

    /// r and s as TPM2B_ECC_PARAMETERs, padded to 32 bytes as the TPM writes them.
    static func tpm2b(_ v: [UInt8]) -> [UInt8] {
        let padded = [UInt8](repeating: 0, count: max(0, 32 - v.count)) + v
        return [UInt8(padded.count >> 8), UInt8(padded.count & 0xff)] + padded
    }

    func resetFirstUse(_ ref: String) async throws -> Any {
        let d = try await fleet.resolve(ref)
        guard try await AttestationService(store: fleet.store, bundles: bundles).resetFirstUse(deviceID: d.id) else {
            throw ControllerError.invalidInput("device \(d.id) registered no TPM keys (file identity)")
        }
        return ["device": d.id, "firstUsePCRs": "forgotten: the next quote records PCR 0, 4 and 7 again"]
    }

    /// `GET /attestation/models`: every hardware model's firmware PCRs.
    func firmwareModels() async throws -> Any {
        try await fleet.store.firmwareReferences()
    }

    /// `POST /attestation/models/MODEL` {"pcrs": {"0": HEX, "4": HEX, "7": HEX}}, or {"remove": true}.
    func setFirmwareModel(_ model: String, _ body: [String: Any]) async throws -> Any {
        let service = AttestationService(store: fleet.store, bundles: bundles)
        if body["remove"] as? Bool == true {
            try await service.setFirmwareReference(model: model, pcrs: nil)
            return ["model": model, "removed": true] as [String: Any]
        }
        var pcrs: [Int: String] = [:]
        for (k, v) in body["pcrs"] as? [String: Any] ?? [:] {
            guard let index = Int(k), let value = v as? String else { throw ControllerError.invalidInput("pcrs: '\(k)' is not INDEX: HEX") }
            pcrs[index] = value
        }
        try await service.setFirmwareReference(model: model, pcrs: pcrs)
        return ["model": model, "pcrs": try await fleet.store.firmwareReferences()[model] ?? [:]] as [String: Any]
    }
}
