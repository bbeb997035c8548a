// The controller's check of a device's quote, with no TPM: a quote is only a
// signed statement "these PCRs hashed to this digest, and here is your nonce",
// so P-256 ECDSA and SHA-256 are all it takes.
//
//   1. parse TPMS_ATTEST (magic, type quote) and the AK's TPM2B_PUBLIC
//   2. ECDSA P-256 over SHA-256(attest) with the AK          → badSignature
//   3. extraData == the nonce this controller issued         → nonceMismatch
//   4. one SHA-256 bank, the same PCRs as the reported values → selectionMismatch
//   5. SHA-256(values in selection order) == pcrDigest       → pcrDigestMismatch
//   6. PCR 0 and 4 not all zero                              → zeroPCR
//   7. each expected PCR equals its value                    → report.mismatches

import Crypto
import OutpostBundle

/// What a device sends for one attestation.
public struct QuoteEvidence: Sendable, Equatable {
    /// The marshalled TPMS_ATTEST the AK signed.
    public var attest: [UInt8]
    /// The ECDSA signature's r and s (each at most 32 bytes, big-endian).
    public var signatureR: [UInt8]
    public var signatureS: [UInt8]
    /// SHA-256 bank PCR values by index, the ones the quote covers.
    public var pcrs: [Int: [UInt8]]

    public init(attest: [UInt8], signatureR: [UInt8], signatureS: [UInt8], pcrs: [Int: [UInt8]]) {
        self.attest = attest
        self.signatureR = signatureR
        self.signatureS = signatureS
        self.pcrs = pcrs
    }
}

/// One PCR whose value is not the expected one.
public struct PCRMismatch: Sendable, Equatable, CustomStringConvertible {
    public var index: Int
    public var expected: [UInt8]
    /// Nil when the quote does not cover this PCR at all.
    public var actual: [UInt8]?

    public init(index: Int, expected: [UInt8], actual: [UInt8]?) {
        self.index = index
        self.expected = expected
        self.actual = actual
    }

    public var description: String {
        "PCR \(index): expected \(attestationHex(expected)), actual \(actual.map { attestationHex($0) } ?? "not quoted")"
    }
}

/// The outcome of a quote whose signature, nonce and digest held: the values
/// it proves, and every expected PCR that differed.
public struct AttestationReport: Sendable, Equatable, CustomStringConvertible {
    public var quote: QuoteAttestation
    /// The proven values by PCR index.
    public var pcrs: [Int: [UInt8]]
    /// Ascending by index; empty when the device booted what was expected.
    public var mismatches: [PCRMismatch]

    public var passed: Bool { mismatches.isEmpty }

    public var description: String {
        passed ? "attestation: PCRs \(pcrs.keys.sorted()) as expected"
            : "attestation: " + mismatches.map(\.description).joined(separator: "; ")
    }
}

/// Verifies quotes made by one attestation key.
public struct QuoteVerifier: Sendable {
    public let attestationKey: AttestationKeyPublic
    /// PCRs that firmware must have extended: all zero means nothing was measured.
    public static let mustBeMeasured = [0, 4]

    /// `attestationKeyPublic` is the AK's marshalled TPM2B_PUBLIC, as the device registered it.
    public init(attestationKeyPublic: [UInt8]) throws(AttestationError) {
        attestationKey = try AttestationKeyPublic(parsing: attestationKeyPublic)
    }

    /// Checks `evidence` against the `nonce` this controller issued, then
    /// compares its PCRs with `expected` (index → SHA-256 value: PCR 8/9 from
    /// the signed bundle manifest, PCR 0/4/7 from first use). Throws for a
    /// quote that proves nothing; returns a report naming each differing PCR.
    public func verify(_ evidence: QuoteEvidence, nonce: [UInt8],
                       expected: [Int: [UInt8]] = [:]) throws(AttestationError) -> AttestationReport {
        let quote = try QuoteAttestation(parsing: evidence.attest)
        try checkSignature(evidence)
        guard quote.extraData == nonce else {
            throw .nonceMismatch(expected: attestationHex(nonce), actual: attestationHex(quote.extraData))
        }
        let quoted = quote.selections.filter { !$0.indexes.isEmpty }
        let reported = evidence.pcrs.keys.sorted()
        guard quoted.count == 1, quoted[0].hash == TPMConstant.algSHA256, quoted[0].indexes == reported else {
            let text = quoted.map { "\($0.hash == TPMConstant.algSHA256 ? "sha256" : "alg 0x" + String($0.hash, radix: 16)):\($0.indexes)" }
            throw .selectionMismatch(quoted: text.isEmpty ? "none" : text.joined(separator: " "), reported: "sha256:\(reported)")
        }
        var hasher = SHA256()
        for index in reported {
            let value = evidence.pcrs[index] ?? []
            guard value.count == 32 else { throw .badPCRValue(index: index, length: value.count) }
            hasher.update(data: value)
        }
        let computed = Array(hasher.finalize())
        guard computed == quote.pcrDigest else {
            throw .pcrDigestMismatch(quoted: attestationHex(quote.pcrDigest), computed: attestationHex(computed))
        }
        for index in Self.mustBeMeasured {
            if let value = evidence.pcrs[index], value.allSatisfy({ $0 == 0 }) { throw .zeroPCR(index: index) }
        }
        var mismatches: [PCRMismatch] = []
        for (index, want) in expected.sorted(by: { $0.key < $1.key }) where evidence.pcrs[index] != want {
            mismatches.append(PCRMismatch(index: index, expected: want, actual: evidence.pcrs[index]))
        }
        return AttestationReport(quote: quote, pcrs: evidence.pcrs, mismatches: mismatches)
    }

    /// ECDSA P-256 over SHA-256(attest). r and s may come without leading zeros.
    func checkSignature(_ evidence: QuoteEvidence) throws(AttestationError) {
        guard evidence.signatureR.count <= 32, evidence.signatureS.count <= 32 else { throw .badSignature }
        let raw = [UInt8](repeating: 0, count: 32 - evidence.signatureR.count) + evidence.signatureR
            + [UInt8](repeating: 0, count: 32 - evidence.signatureS.count) + evidence.signatureS
        guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: raw),
              attestationKey.key.isValidSignature(signature, for: evidence.attest) else {
            throw .badSignature
        }
    }
}

extension QuoteVerifier {
    /// Parses hex (either case) as the builder's predictions and error lines spell it; nil for anything else.
    public static func bytes(hex: String) -> [UInt8]? {
        let chars = Array(hex.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

extension QuoteVerifier {
    /// The expectations for a device running `slot` of a bundle: PCR 8 and 9
    /// as the builder predicted them inside the signed manifest, with the
    /// firmware PCRs (0, 4, 7) the device showed at registration.
    public static func expectations(slot: BundleManifest.SlotPCRs,
                                    firstUse: [Int: [UInt8]]) throws(AttestationError) -> [Int: [UInt8]] {
        var out = firstUse
        for (index, hex) in [(8, slot.pcr8), (9, slot.pcr9)] {
            guard let value = bytes(hex: hex), value.count == 32 else {
                throw .malformed(structure: "bundle manifest", field: "pcr\(index)", offset: 0, reason: "\"\(hex)\" is not 32 bytes of hex")
            }
            out[index] = value
        }
        return out
    }
}
