// Why a quote was refused, each as one line that names the field and where.

/// A quote the controller will not accept. Malformed input names the field and
/// its byte offset; a failed check names what was compared.
public enum AttestationError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The bytes do not parse: `structure` (TPMS_ATTEST, TPM2B_PUBLIC), the
    /// field, its offset in the input, and what was wrong.
    case malformed(structure: String, field: String, offset: Int, reason: String)
    /// A key is not one the controller accepts (an AK that is not a restricted
    /// signing key, an EK that is not a restricted decryption key); the reason names which.
    case unsuitableKey(reason: String)
    /// A credential for MakeCredential that a TPM cannot take (empty, longer than a SHA-256 digest).
    case badCredential(reason: String)
    /// The signature does not verify over SHA-256(attest) with the AK.
    case badSignature
    /// The quote's extraData is not the nonce the controller sent.
    case nonceMismatch(expected: String, actual: String)
    /// The quote selects other PCRs (or another bank) than the evidence claims.
    case selectionMismatch(quoted: String, reported: String)
    /// SHA-256 of the reported PCR values is not the quote's pcrDigest.
    case pcrDigestMismatch(quoted: String, computed: String)
    /// A firmware PCR that must hold measurements is all zero.
    case zeroPCR(index: Int)
    /// A reported PCR value is not 32 bytes.
    case badPCRValue(index: Int, length: Int)

    public var description: String {
        switch self {
        case .malformed(let structure, let field, let offset, let reason):
            return "attestation: \(structure).\(field) at offset \(offset): \(reason)"
        case .unsuitableKey(let reason):
            return "attestation: \(reason)"
        case .badCredential(let reason):
            return "attestation: credential: \(reason)"
        case .badSignature:
            return "attestation: the signature does not verify over the quote with the attestation key"
        case .nonceMismatch(let expected, let actual):
            return "attestation: TPMS_ATTEST.extraData is \(actual.isEmpty ? "empty" : actual), not the nonce \(expected)"
        case .selectionMismatch(let quoted, let reported):
            return "attestation: the quote covers PCRs \(quoted), the reported values PCRs \(reported)"
        case .pcrDigestMismatch(let quoted, let computed):
            return "attestation: TPMS_ATTEST.pcrDigest is \(quoted), the reported PCR values hash to \(computed)"
        case .zeroPCR(let index):
            return "attestation: PCR \(index) is all zero: firmware that measures nothing cannot be attested"
        case .badPCRValue(let index, let length):
            return "attestation: PCR \(index) is \(length) bytes, not a SHA-256 digest (32)"
        }
    }
}

/// Lower-case hex, the form error lines and reports use.
public func attestationHex(_ bytes: some Sequence<UInt8>) -> String {
    let digits: [Character] = Array("0123456789abcdef")
    var out = ""
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0x0F)])
    }
    return out
}
