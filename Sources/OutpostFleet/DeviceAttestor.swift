// What remote attestation needs from the device's TPM, as a protocol: the
// client lives below the TPM code (OutpostTrust implements it with
// TPMAttestor), and a device with the file identity has none.

import OutpostProto

/// A quote as the TPM made it: the attestation structure, its signature and
/// the PCR values the signed digest covers.
public struct AttestationEvidence: Sendable, Equatable {
    public var attest: [UInt8]
    public var signatureR: [UInt8]
    public var signatureS: [UInt8]
    public var pcrs: [Int: [UInt8]]

    public init(attest: [UInt8], signatureR: [UInt8], signatureS: [UInt8], pcrs: [Int: [UInt8]]) {
        self.attest = attest
        self.signatureR = signatureR
        self.signatureS = signatureS
        self.pcrs = pcrs
    }
}

/// The TPM side of attestation: the keys registration sends, ActivateCredential
/// for the controller's challenge, and quotes.
public protocol DeviceAttestor: Sendable {
    /// The EK's and the AK's marshalled TPM2B_PUBLIC.
    func endorsementKeyPublic() throws(FleetError) -> [UInt8]
    var attestationKeyPublic: [UInt8] { get }
    /// The EK certificate (DER) from the TPM's NV; nil when it has none. A read that fails
    /// throws: the caller registers without it and says so.
    func endorsementCertificate() throws(FleetError) -> [UInt8]?
    /// The secret the controller's MakeCredential sealed, as only this TPM can open it.
    func activateCredential(credentialBlob: [UInt8], encryptedSecret: [UInt8]) throws(FleetError) -> [UInt8]
    func quote(nonce: [UInt8], pcrs: [Int]) throws(FleetError) -> AttestationEvidence
    /// The firmware's event log (binary_bios_measurements), nil when there is none.
    func eventLog() -> [UInt8]?
}

extension DeviceIdentity {
    /// Where the key lives; the TPM identity says so itself.
    public var kind: Outpost_Api_V1_IdentityKind { .file }
}
