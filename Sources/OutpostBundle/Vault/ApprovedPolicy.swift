// The vault's policies and the release key's signature over an approved
// policy. The release key signs, when the bundle is made, the part of the
// policy the builder can predict (the security-version floor and the slot's
// PCR 8/9); the object sealed at enrolment trusts whatever that key signs,
// plus the firmware PCRs 0/7 measured on the device:
//
//   approved (signed, per slot)  = PolicyPCR{8,9}(PolicyNV(floor ≤ securityVersion)(0³²))
//   sealed object's authPolicy   = PolicyPCR{0,7}(PolicyAuthorize(release key, "outpost-vault-v1"))
//
//   on the device, in one policy session:
//     PolicyNV → PolicyPCR{8,9} → (digest = approved) → VerifySignature(release key, aHash) → ticket
//     → PolicyAuthorize(approved, ref, key name, ticket) → PolicyPCR{0,7} → Unseal
//
//   aHash = SHA-256(approved ‖ policyRef); the signature is ECDSA P-256 over it.

import Crypto

/// A policy digest the release key approves, with the reference that says what for.
public struct ApprovedPolicy: Hashable, Sendable {
    public let policy: TPMPolicyDigest
    public let policyRef: [UInt8]

    public init(policy: TPMPolicyDigest, policyRef: [UInt8] = VaultPolicy.policyRef) throws(TPMPolicyError) {
        guard policyRef.count <= 64 else {
            throw .invalidArgument(command: "PolicyAuthorize", field: "policyRef", reason: "\(policyRef.count) bytes, more than 64")
        }
        self.policy = policy
        self.policyRef = policyRef
    }

    /// The bytes the key signs; their SHA-256 is the aHash TPM2_PolicyAuthorize checks.
    public var signedBytes: [UInt8] { policy.bytes + policyRef }

    /// `SHA-256(approvedPolicy ‖ policyRef)`, the digest given to TPM2_VerifySignature.
    public var aHash: [UInt8] { sha256(signedBytes) }

    /// Signs with the release key (build host).
    public func sign(with key: SigningKey) throws(TPMPolicyError) -> ApprovedPolicySignature {
        do {
            let signature = try key.key.signature(for: signedBytes)
            return try ApprovedPolicySignature(raw: Array(signature.rawRepresentation))
        } catch let error as TPMPolicyError {
            throw error
        } catch {
            throw .signatureMalformed(reason: "signing failed: \(error)")
        }
    }

    /// Signs with the release key and the RFC 6979 nonce: the same key and
    /// policy always give the same signature, so images that carry it are reproducible.
    public func signDeterministically(with key: SigningKey) throws(TPMPolicyError) -> ApprovedPolicySignature {
        try ApprovedPolicySignature(raw: DeterministicECDSA.sign(signedBytes, key: key.key))
    }

    /// What TPM2_VerifySignature decides, in software: true only for a
    /// signature by `key` over this policy and reference.
    public func isSigned(by key: P256.Signing.PublicKey, _ signature: ApprovedPolicySignature) -> Bool {
        guard let ecdsa = try? P256.Signing.ECDSASignature(rawRepresentation: signature.r + signature.s) else { return false }
        return key.isValidSignature(ecdsa, for: signedBytes)
    }
}

/// An ECDSA P-256 signature over an approved policy, in the forms the TPM and openssl take.
public struct ApprovedPolicySignature: Hashable, Sendable {
    public let r: [UInt8]
    public let s: [UInt8]

    /// r ‖ s, 32 bytes each.
    public init(raw: [UInt8]) throws(TPMPolicyError) {
        guard raw.count == 64 else { throw .signatureMalformed(reason: "\(raw.count) bytes, not r ‖ s of 32 bytes each") }
        r = Array(raw.prefix(32))
        s = Array(raw.suffix(32))
    }

    /// TPMT_SIGNATURE: sigAlg ECDSA, hash SHA-256, r and s as TPM2Bs (`0018 000b 0020 r 0020 s`),
    /// what TPM2_VerifySignature takes.
    public var tpmSignature: [UInt8] {
        var out: [UInt8] = []
        out.appendBigEndian(TPMAlgorithm.ecdsa)
        out.appendBigEndian(TPMAlgorithm.sha256)
        out.appendSized(r)
        out.appendSized(s)
        return out
    }

    /// DER, for `openssl dgst -verify`.
    public var der: [UInt8] {
        get throws(TPMPolicyError) {
            do { return Array(try P256.Signing.ECDSASignature(rawRepresentation: r + s).derRepresentation) } catch {
                throw .signatureMalformed(reason: "\(error)")
            }
        }
    }
}

/// The vault's two policies, computed the same way by the builder (approved
/// policies, signed into the bundle) and by the device at enrolment (the sealed
/// object's authPolicy).
public enum VaultPolicy {
    /// Says "vault unlock" in every approved-policy signature, so a release-key
    /// signature made for anything else cannot authorise the vault.
    public static let policyRef: [UInt8] = Array("outpost-vault-v1".utf8)

    /// The security-version floor's NV handle, in the owner range (TCG: 0x01800000–0x01BFFFFF).
    public static let floorHandle: UInt32 = 0x0180_0030

    /// The floor's public area as it stands after its first increment: an
    /// 8-byte counter, owner and auth read/write, no dictionary-attack
    /// lockout. Every device defines it with exactly this template (the agent
    /// at enrolment), so the builder knows its name without a TPM; `written`
    /// is part of the name, and PolicyNV needs a written index anyway.
    public static var floorIndex: TPMNVIndexPublic {
        get throws(TPMPolicyError) {
            try TPMNVIndexPublic(index: floorHandle, attributes: [.counter, .ownerWrite, .authWrite, .ownerRead,
                                                                 .authRead, .noDA, .written], dataSize: 8)
        }
    }

    /// The policy the release key signs for one slot of a bundle: the
    /// security-version floor in `floorIndex` (an 8-byte big-endian counter) is at
    /// most `securityVersion`, and PCR 8/9 hold the values predicted for the slot.
    public static func approved(slot: BundleManifest.SlotPCRs, securityVersion: UInt64,
                                floorIndex: TPMNVIndexPublic) throws(TPMPolicyError) -> TPMPolicyDigest {
        var operand: [UInt8] = []
        operand.appendBigEndian(securityVersion)
        return try TPMPolicyDigest()
            .policyNV(index: floorIndex, operandB: operand, operation: .unsignedLessOrEqual)
            .policyPCR([8: try pcr(slot.pcr8, 8), 9: try pcr(slot.pcr9, 9)])
    }

    /// The sealed object's authPolicy: anything `releaseKey` approved for the
    /// vault, then the firmware PCR 0 and 7 values captured at enrolment.
    public static func sealing(releaseKey: TPMVerificationKey, pcr0: [UInt8], pcr7: [UInt8]) throws(TPMPolicyError) -> TPMPolicyDigest {
        try TPMPolicyDigest()
            .policyAuthorize(keySignName: releaseKey.name, policyRef: policyRef)
            .policyPCR([0: pcr0, 7: pcr7])
    }

    static func pcr(_ hexValue: String, _ index: Int) throws(TPMPolicyError) -> [UInt8] {
        guard let value = bytes(fromHex: hexValue), value.count == TPMPolicyDigest.size else {
            throw .invalidArgument(command: "PolicyPCR", field: "PCR \(index)", reason: "'\(hexValue)' is not 64 hex digits")
        }
        return value
    }
}
