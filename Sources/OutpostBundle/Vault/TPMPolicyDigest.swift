// TPM 2.0 policy digests computed without a TPM (Part 3, "Enhanced
// Authorization"), SHA-256 sessions only. The builder signs digests it can
// only compute in software, so each update here is exactly what a trial
// session of the TPM computes; the tests compare them with swtpm byte by byte.
//
//   every update:   digest' = SHA-256(digest ‖ TPM_CC (u32) ‖ args), from 32 zero bytes
//
//   PolicyPCR        0x0000017F  args = TPML_PCR_SELECTION ‖ SHA-256(PCR values, ascending index)
//   PolicyNV         0x00000149  args = SHA-256(operandB ‖ offset u16 ‖ operation u16) ‖ NV index name
//   PolicyAuthorize  0x0000016A  digest' = SHA-256(SHA-256(0³² ‖ CC ‖ keySign name) ‖ policyRef)
//   PolicyOR         0x00000171  digest' = SHA-256(0³² ‖ CC ‖ branch₁ ‖ … ‖ branchₙ)
//
//   TPML_PCR_SELECTION (one bank):
//   +0 count u32 = 1   +4 hash u16 = 000b   +6 sizeofSelect u8 = 3   +7 pcrSelect[3]
//      PCR n is bit (n mod 8) of byte n/8; the TPM hashes the selection as sent,
//      so the device must send sizeofSelect 3 too (tpm2-tools and tss2 do).
//
// All integers are big-endian, as the TPM marshals them.

import Crypto

/// TPM_CC values of the policy commands computed here (Part 2, table 12).
enum TPMCommandCode {
    static let policyNV: UInt32 = 0x0000_0149
    static let policyAuthorize: UInt32 = 0x0000_016A
    static let policyOR: UInt32 = 0x0000_0171
    static let policyPCR: UInt32 = 0x0000_017F
}

/// TPM_ALG_ID values used in names and selections (Part 2, table 9).
enum TPMAlgorithm {
    static let sha256: UInt16 = 0x000B
    static let ecc: UInt16 = 0x0023
    static let ecdsa: UInt16 = 0x0018
    static let null: UInt16 = 0x0010
    static let curveP256: UInt16 = 0x0003
}

/// Big-endian marshalling, the TPM's byte order.
extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        for shift in stride(from: T.bitWidth - 8, through: 0, by: -8) { append(UInt8(truncatingIfNeeded: value >> shift)) }
    }

    /// A TPM2B: u16 size, then the bytes.
    mutating func appendSized(_ bytes: [UInt8]) {
        appendBigEndian(UInt16(bytes.count))
        append(contentsOf: bytes)
    }
}

func sha256(_ bytes: [UInt8]) -> [UInt8] { Array(SHA256.hash(data: bytes)) }

/// TPM_EO: how PolicyNV compares the NV contents (operand A) with operand B (Part 2, table 14).
public enum TPMComparison: UInt16, Sendable, CaseIterable {
    case equal = 0x0000
    case notEqual = 0x0001
    case signedGreaterThan = 0x0002
    case unsignedGreaterThan = 0x0003
    case signedLessThan = 0x0004
    case unsignedLessThan = 0x0005
    case signedGreaterOrEqual = 0x0006
    case unsignedGreaterOrEqual = 0x0007
    case signedLessOrEqual = 0x0008
    case unsignedLessOrEqual = 0x0009
    /// All bits set in A are set in B.
    case bitSet = 0x000A
    /// All bits set in A are clear in B.
    case bitClear = 0x000B
}

/// A SHA-256 policy digest: what a policy session accumulates, and an object's
/// authPolicy. Each update returns the next digest, so a policy reads in the
/// order the device runs its commands: `TPMPolicyDigest().policyNV(…).policyPCR(…)`.
public struct TPMPolicyDigest: Hashable, Sendable, CustomStringConvertible {
    public static let size = 32
    public let bytes: [UInt8]

    /// The digest of a fresh session: 32 zero bytes.
    public init() { bytes = [UInt8](repeating: 0, count: Self.size) }

    /// A digest computed elsewhere (a signed approved policy, a TPM's output).
    public init(bytes: [UInt8]) throws(TPMPolicyError) {
        guard bytes.count == Self.size else {
            throw .invalidArgument(command: "policy digest", field: "bytes", reason: "\(bytes.count) bytes, not 32")
        }
        self.bytes = bytes
    }

    public var description: String { hex(bytes) }

    private func extended(_ code: UInt32, _ args: [UInt8]) -> TPMPolicyDigest {
        var input = bytes
        input.appendBigEndian(code)
        input += args
        return TPMPolicyDigest(unchecked: sha256(input))
    }

    private init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    /// TPM2_PolicyPCR over the SHA-256 bank: `values` maps each selected PCR
    /// (0–23) to the 32-byte value it must hold when the policy is satisfied.
    public func policyPCR(_ values: [Int: [UInt8]]) throws(TPMPolicyError) -> TPMPolicyDigest {
        guard !values.isEmpty else {
            throw .invalidArgument(command: "PolicyPCR", field: "pcrs", reason: "no PCR selected")
        }
        var bitmap: [UInt8] = [0, 0, 0]
        var concatenated: [UInt8] = []
        for (index, value) in values.sorted(by: { $0.key < $1.key }) {
            guard (0..<24).contains(index) else {
                throw .invalidArgument(command: "PolicyPCR", field: "PCR \(index)", reason: "not a PCR of a 24-PCR bank")
            }
            guard value.count == Self.size else {
                throw .invalidArgument(command: "PolicyPCR", field: "PCR \(index)", reason: "\(value.count) bytes, not a SHA-256 value")
            }
            bitmap[index / 8] |= 1 << (index % 8)
            concatenated += value
        }
        var args: [UInt8] = []
        args.appendBigEndian(UInt32(1))
        args.appendBigEndian(TPMAlgorithm.sha256)
        args.append(UInt8(bitmap.count))
        args += bitmap
        args += sha256(concatenated)
        return extended(TPMCommandCode.policyPCR, args)
    }

    /// TPM2_PolicyNV: the NV index named `indexName`, read from `offset`, must
    /// compare with `operandB` as `operation` says. The name must be the index's
    /// name after it was written (TPMA_NV_WRITTEN set): the TPM refuses an unwritten index.
    public func policyNV(indexName: [UInt8], operandB: [UInt8], offset: UInt16 = 0,
                         operation: TPMComparison) throws(TPMPolicyError) -> TPMPolicyDigest {
        guard indexName.count == 2 + Self.size, indexName.prefix(2) == [0x00, 0x0B] else {
            throw .invalidArgument(command: "PolicyNV", field: "indexName", reason: "not a SHA-256 name (000b ‖ 32 bytes)")
        }
        guard !operandB.isEmpty, operandB.count <= 64 else {
            throw .invalidArgument(command: "PolicyNV", field: "operandB", reason: "\(operandB.count) bytes, must be 1–64")
        }
        var args = operandB
        args.appendBigEndian(offset)
        args.appendBigEndian(operation.rawValue)
        return extended(TPMCommandCode.policyNV, sha256(args) + indexName)
    }

    /// TPM2_PolicyAuthorize: replaces whatever the session held by "a policy
    /// that `keySignName`'s key signed, with `policyRef`". The TPM checks the
    /// session's digest against the signed one first; this computes the result.
    public func policyAuthorize(keySignName: [UInt8], policyRef: [UInt8] = []) throws(TPMPolicyError) -> TPMPolicyDigest {
        guard keySignName.count == 2 + Self.size, keySignName.prefix(2) == [0x00, 0x0B] else {
            throw .invalidArgument(command: "PolicyAuthorize", field: "keySign", reason: "not a SHA-256 name (000b ‖ 32 bytes)")
        }
        guard policyRef.count <= 64 else {
            throw .invalidArgument(command: "PolicyAuthorize", field: "policyRef", reason: "\(policyRef.count) bytes, more than 64")
        }
        let first = TPMPolicyDigest().extended(TPMCommandCode.policyAuthorize, keySignName)
        return TPMPolicyDigest(unchecked: sha256(first.bytes + policyRef))
    }

    /// TPM2_PolicyOR: any one of 2–8 branches satisfies it. The TPM also checks
    /// that the session's digest is one of them; the result does not depend on which.
    public static func policyOR(_ branches: [TPMPolicyDigest]) throws(TPMPolicyError) -> TPMPolicyDigest {
        guard (2...8).contains(branches.count) else {
            throw .invalidArgument(command: "PolicyOR", field: "branches", reason: "\(branches.count), must be 2–8")
        }
        return TPMPolicyDigest().extended(TPMCommandCode.policyOR, branches.flatMap(\.bytes))
    }
}
