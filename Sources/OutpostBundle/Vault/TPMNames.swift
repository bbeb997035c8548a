// TPM names of the two entities the vault's policies refer to, computed
// without a TPM. A name is nameAlg ‖ H(public area), so the builder and the
// enrolment can bind a policy to an NV index or a key before either exists.
//
//   TPMS_NV_PUBLIC                         TPMT_PUBLIC (ECC P-256 verification key)
//   +0  nvIndex     u32 (01xxxxxx)         +0  type              u16 = 0023 (ECC)
//   +4  nameAlg     u16 = 000b             +2  nameAlg           u16 = 000b
//   +6  attributes  u32 (TPMA_NV)          +4  objectAttributes  u32
//   +10 authPolicy  TPM2B                  +8  authPolicy        TPM2B = 0000
//       dataSize    u16                        symmetric         u16 = 0010 (null)
//                                              scheme            u16 = 0010 (null)
//   name = 000b ‖ SHA-256(TPMS_NV_PUBLIC)      curveID           u16 = 0003 (P-256)
//                                              kdf               u16 = 0010 (null)
//                                              unique.x, .y      TPM2B each (32 bytes)
//                                          name = 000b ‖ SHA-256(TPMT_PUBLIC)

import Crypto

/// TPMA_NV bits (Part 2, table 204); the index type TPM_NT sits in bits 4–7.
public struct TPMNVAttributes: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let ownerWrite = TPMNVAttributes(rawValue: 0x0000_0002)
    public static let authWrite = TPMNVAttributes(rawValue: 0x0000_0004)
    public static let policyWrite = TPMNVAttributes(rawValue: 0x0000_0008)
    /// TPM_NT_COUNTER: only TPM2_NV_Increment writes it, and a new counter
    /// starts at the highest count any counter of this TPM reached.
    public static let counter = TPMNVAttributes(rawValue: 0x0000_0010)
    /// TPM_NT_BITS: only TPM2_NV_SetBits writes it, and bits are never cleared.
    public static let bits = TPMNVAttributes(rawValue: 0x0000_0020)
    /// Deletable only with TPM2_NV_UndefineSpaceSpecial and the index's policy.
    public static let policyDelete = TPMNVAttributes(rawValue: 0x0000_0400)
    public static let writeDefine = TPMNVAttributes(rawValue: 0x0000_2000)
    public static let ownerRead = TPMNVAttributes(rawValue: 0x0002_0000)
    public static let authRead = TPMNVAttributes(rawValue: 0x0004_0000)
    public static let policyRead = TPMNVAttributes(rawValue: 0x0008_0000)
    public static let noDA = TPMNVAttributes(rawValue: 0x0200_0000)
    public static let orderly = TPMNVAttributes(rawValue: 0x0400_0000)
    /// Set by the TPM at the first write; part of the name PolicyNV binds to.
    public static let written = TPMNVAttributes(rawValue: 0x2000_0000)
    public static let platformCreate = TPMNVAttributes(rawValue: 0x4000_0000)
}

/// The public area of an NV index, and its name.
public struct TPMNVIndexPublic: Hashable, Sendable {
    public let index: UInt32
    public let attributes: TPMNVAttributes
    public let authPolicy: [UInt8]
    public let dataSize: UInt16

    public init(index: UInt32, attributes: TPMNVAttributes, authPolicy: [UInt8] = [], dataSize: UInt16) throws(TPMPolicyError) {
        guard index >> 24 == 0x01 else {
            throw .invalidArgument(command: "NV public", field: "nvIndex", reason: "0x\(String(index, radix: 16)) is not an NV handle (01xxxxxx)")
        }
        guard authPolicy.isEmpty || authPolicy.count == TPMPolicyDigest.size else {
            throw .invalidArgument(command: "NV public", field: "authPolicy", reason: "\(authPolicy.count) bytes, not 0 or 32")
        }
        guard dataSize > 0, dataSize <= 2048 else {
            throw .invalidArgument(command: "NV public", field: "dataSize", reason: "\(dataSize), must be 1–2048")
        }
        if attributes.contains(.counter) {
            guard dataSize == 8 else {
                throw .invalidArgument(command: "NV public", field: "dataSize", reason: "a counter holds 8 bytes, not \(dataSize)")
            }
        }
        self.index = index
        self.attributes = attributes
        self.authPolicy = authPolicy
        self.dataSize = dataSize
    }

    /// The marshalled TPMS_NV_PUBLIC (what TPM2_NV_ReadPublic returns inside its TPM2B).
    public var marshalled: [UInt8] {
        var out: [UInt8] = []
        out.appendBigEndian(index)
        out.appendBigEndian(TPMAlgorithm.sha256)
        out.appendBigEndian(attributes.rawValue)
        out.appendSized(authPolicy)
        out.appendBigEndian(dataSize)
        return out
    }

    /// `000b ‖ SHA-256(TPMS_NV_PUBLIC)`: changes when the TPM sets TPMA_NV_WRITTEN.
    public var name: [UInt8] { [0x00, 0x0B] + sha256(marshalled) }
}

extension TPMPolicyDigest {
    /// PolicyNV against a known index: also refuses a comparison that reads past
    /// the end of the index, which the TPM refuses too (TPM_RC_SIZE).
    public func policyNV(index: TPMNVIndexPublic, operandB: [UInt8], offset: UInt16 = 0,
                         operation: TPMComparison) throws(TPMPolicyError) -> TPMPolicyDigest {
        guard Int(offset) + operandB.count <= Int(index.dataSize) else {
            throw .invalidArgument(command: "PolicyNV", field: "operandB",
                                   reason: "\(operandB.count) bytes at offset \(offset) pass the end of a \(index.dataSize)-byte index")
        }
        return try policyNV(indexName: index.name, operandB: operandB, offset: offset, operation: operation)
    }
}

/// An ECC P-256 public key as TPM2_LoadExternal loads it for TPM2_VerifySignature:
/// the template above, so the name PolicyAuthorize binds to is fixed by the key alone.
public struct TPMVerificationKey: Hashable, Sendable {
    /// sign | userWithAuth: a verification key needs nothing else.
    public static let defaultAttributes: UInt32 = 0x0004_0040

    public let x: [UInt8]
    public let y: [UInt8]
    public let attributes: UInt32

    public init(_ key: P256.Signing.PublicKey, attributes: UInt32 = defaultAttributes) {
        let point = Array(key.x963Representation.dropFirst())
        x = Array(point.prefix(32))
        y = Array(point.suffix(32))
        self.attributes = attributes
    }

    /// The marshalled TPMT_PUBLIC.
    public var marshalled: [UInt8] {
        var out: [UInt8] = []
        out.appendBigEndian(TPMAlgorithm.ecc)
        out.appendBigEndian(TPMAlgorithm.sha256)
        out.appendBigEndian(attributes)
        out.appendSized([])
        out.appendBigEndian(TPMAlgorithm.null)
        out.appendBigEndian(TPMAlgorithm.null)
        out.appendBigEndian(TPMAlgorithm.curveP256)
        out.appendBigEndian(TPMAlgorithm.null)
        out.appendSized(x)
        out.appendSized(y)
        return out
    }

    /// TPM2B_PUBLIC, the form TPM2_LoadExternal takes (and `tpm2_readpublic -o` writes).
    public var sizedPublic: [UInt8] {
        var out: [UInt8] = []
        out.appendSized(marshalled)
        return out
    }

    /// `000b ‖ SHA-256(TPMT_PUBLIC)`.
    public var name: [UInt8] { [0x00, 0x0B] + sha256(marshalled) }
}
