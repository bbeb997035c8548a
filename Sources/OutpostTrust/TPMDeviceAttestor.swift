// TPMAttestor as the fleet client's DeviceAttestor, and the firmware event
// log the quote carries for diagnosis.

#if canImport(Glibc)
import Glibc
#endif
import OutpostFleet
import OutpostPlatform

/// The device's TPM for attestation: the AK at 0x81000002 under the EK.
public struct TPMDeviceAttestor: DeviceAttestor {
    public let attestor: TPMAttestor
    /// Where the kernel exposes the firmware's TCG event log.
    public let eventLogPath: String

    public init(attestor: TPMAttestor, eventLogPath: String = "/sys/kernel/security/tpm0/binary_bios_measurements") {
        self.attestor = attestor
        self.eventLogPath = eventLogPath
    }

    public func endorsementKeyPublic() throws(FleetError) -> [UInt8] {
        do { return try attestor.endorsementKeyPublic() } catch { throw .identity(step: "TPM endorsement key", detail: error.description) }
    }

    public var attestationKeyPublic: [UInt8] { attestor.attestationKeyPublic }

    /// The EK certificate from NV (0x01C0000A), read in chunks of the TPM's NV_BUFFER_MAX.
    public func endorsementCertificate() throws(FleetError) -> [UInt8]? {
        do { return try attestor.endorsementCertificate() } catch { throw .identity(step: "TPM EK certificate", detail: error.description) }
    }

    public func activateCredential(credentialBlob: [UInt8], encryptedSecret: [UInt8]) throws(FleetError) -> [UInt8] {
        do { return try attestor.activateCredential(credentialBlob: credentialBlob, encryptedSecret: encryptedSecret) } catch {
            throw .identity(step: "TPM ActivateCredential", detail: error.description)
        }
    }

    public func quote(nonce: [UInt8], pcrs: [Int]) throws(FleetError) -> AttestationEvidence {
        let q: TPMQuote
        do { q = try attestor.quote(nonce: nonce, pcrs: pcrs) } catch { throw .identity(step: "TPM quote", detail: error.description) }
        return AttestationEvidence(attest: q.attest, signatureR: q.signatureR, signatureS: q.signatureS, pcrs: q.pcrs)
    }

    /// securityfs files report size 0, so the log is read to its end in chunks (bounded at 4 MiB).
    public func eventLog() -> [UInt8]? {
        let fd = open(eventLogPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count < 4 << 20 {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += chunk[0..<n]
        }
        return out.isEmpty ? nil : out
    }
}
