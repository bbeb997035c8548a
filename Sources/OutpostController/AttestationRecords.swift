import Foundation

/// A device's TPM keys as it registered them (register.proto): the AK is trusted for quotes
/// only once `boundMs` is set, i.e. after the device answered the MakeCredential challenge,
/// which only the TPM holding both the EK and that AK can open.
public struct AttestationKeyRecord: Codable, Sendable, Equatable {
    public var deviceID: String
    /// Marshalled TPM2B_PUBLIC of the endorsement and attestation keys.
    public var ekPublic: Data
    public var akPublic: Data
    /// The EK certificate (DER), empty when the TPM has none.
    public var ekCertificate: Data
    /// SHA-256 of the secret the challenge sealed: the controller keeps no secret a
    /// database reader could answer with.
    public var credentialSHA256: Data
    /// When the device proved the binding (0: not yet).
    public var boundMs: Int64
    /// PCR 0, 4 and 7 (lowercase hex by index) from the device's first quote: trust on first
    /// use for the firmware PCRs the builder cannot predict. Empty until the first quote.
    public var firstUse: [String: String]
    /// What the registration made of the EK certificate: "verified by CN=…", "no EK certificate
    /// in the TPM" or "not checked: no EK CA configured" (nil: registered before it was checked).
    public var ekCertificateStatus: String?

    public init(deviceID: String, ekPublic: Data, akPublic: Data, ekCertificate: Data, credentialSHA256: Data,
                boundMs: Int64 = 0, firstUse: [String: String] = [:], ekCertificateStatus: String? = nil) {
        self.deviceID = deviceID
        self.ekPublic = ekPublic
        self.akPublic = akPublic
        self.ekCertificate = ekCertificate
        self.credentialSHA256 = credentialSHA256
        self.boundMs = boundMs
        self.firstUse = firstUse
        self.ekCertificateStatus = ekCertificateStatus
    }
}

/// The last quote a device sent and what the controller made of it: everything
/// `tpm2_checkquote` needs to check it again (see `AttestationFiles`).
public struct AttestationRecord: Codable, Sendable, Equatable {
    public struct Mismatch: Codable, Sendable, Equatable {
        public var index: Int
        public var expected: String
        /// Empty when the quote does not cover the PCR.
        public var actual: String
    }

    public var deviceID: String
    public var receivedMs: Int64
    public var passed: Bool
    /// One line: why it failed or was refused, or what passed.
    public var reason: String
    public var mismatches: [Mismatch]
    public var nonce: Data
    /// TPMS_ATTEST as signed.
    public var attest: Data
    public var signatureR: Data
    public var signatureS: Data
    /// SHA-256 values by PCR index (lowercase hex).
    public var pcrs: [String: String]
    public var akPublic: Data
    /// gzip of the firmware event log, as the device sent it.
    public var eventLog: Data
    public var slot: String
    public var osVersion: String
    /// The hardware model the device reported, and where PCR 0/4/7's expectations came from
    /// ("first use" or "model BOARD").
    public var board: String?
    public var firmwareReference: String?
    /// SHA-256 of the config token handed out with a pass (empty otherwise).
    public var tokenSHA256: Data
}
