// TPM2_MakeCredential in software, for a controller that has no TPM (TPM 2.0
// Part 1, "Credential Protection" and Annex C.6 for ECC). The device answers
// with TPM2_ActivateCredential, which only a TPM holding both the EK and a key
// of the given name can do: that is how the AK is bound to the EK.
//
//   ephemeral P-256 key e;  Z = x(e · EK)
//   seed      = KDFe(SHA-256, Z, "IDENTITY\0", x(e·G), x(EK), 256)
//   symKey    = KDFa(SHA-256, seed, "STORAGE", name, "", 128)
//   hmacKey   = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256)
//   encIdentity = AES-128-CFB(symKey, IV 0, TPM2B_DIGEST(credential))
//   TPM2B_ID_OBJECT        = size ‖ TPM2B(HMAC-SHA-256(hmacKey, encIdentity ‖ name)) ‖ encIdentity
//   TPM2B_ENCRYPTED_SECRET = size ‖ TPMS_ECC_POINT(e·G)

import Crypto
import CryptoExtras

/// A credential sealed to one TPM's EK for one key name.
public struct CredentialChallenge: Sendable, Equatable {
    /// TPM2B_ID_OBJECT, marshalled.
    public var credentialBlob: [UInt8]
    /// TPM2B_ENCRYPTED_SECRET, marshalled: the ephemeral public point.
    public var encryptedSecret: [UInt8]

    /// Seals `credential` (1 to 32 bytes, e.g. a random secret the controller
    /// remembers) to the EK in `endorsementKeyPublic` (a marshalled
    /// TPM2B_PUBLIC of the TCG ECC template) for the object named `name`.
    public static func make(endorsementKeyPublic: [UInt8], name: [UInt8], credential: [UInt8]) throws(AttestationError) -> CredentialChallenge {
        try make(endorsementKeyPublic: endorsementKeyPublic, name: name, credential: credential,
                 ephemeral: P256.KeyAgreement.PrivateKey())
    }

    static func make(endorsementKeyPublic: [UInt8], name: [UInt8], credential: [UInt8],
                     ephemeral: P256.KeyAgreement.PrivateKey) throws(AttestationError) -> CredentialChallenge {
        guard (1...32).contains(credential.count) else {
            throw .badCredential(reason: "\(credential.count) bytes is not 1 to 32 bytes")
        }
        guard name.count == 34, name.prefix(2) == [0x00, 0x0B] else {
            throw .malformed(structure: "TPM2B_NAME", field: "name", offset: 0, reason: "\(name.count) bytes, not a SHA-256 name (34)")
        }
        let ek = try ECCPublicArea(parsing: endorsementKeyPublic)
        let need = TPMConstant.attrRestricted | TPMConstant.attrDecrypt
        guard ek.objectAttributes & need == need, ek.objectAttributes & TPMConstant.attrSign == 0 else {
            throw .unsuitableKey(reason: "the endorsement key's attributes 0x\(String(ek.objectAttributes, radix: 16)) are not a restricted decryption key")
        }
        guard ek.symmetric.algorithm == 0x0006, ek.symmetric.keyBits == 128, ek.symmetric.mode == 0x0043 else {
            throw .unsuitableKey(reason: "the endorsement key's symmetric scheme is not AES-128-CFB")
        }
        let ekKey: P256.KeyAgreement.PublicKey
        do { ekKey = try P256.KeyAgreement.PublicKey(x963Representation: ek.x963) } catch {
            throw ECCPublicArea.notOnCurve(endorsementKeyPublic)
        }
        let shared: [UInt8]
        do { shared = try ephemeral.sharedSecretFromKeyAgreement(with: ekKey).withUnsafeBytes { Array($0) } } catch {
            throw .unsuitableKey(reason: "ECDH with the endorsement key failed")
        }
        let point = Array(ephemeral.publicKey.x963Representation.dropFirst())
        let ephemeralX = Array(point.prefix(32)), ephemeralY = Array(point.suffix(32))

        let seed = kdfe(z: shared, use: Array("IDENTITY".utf8) + [0], partyU: ephemeralX, partyV: ek.x)
        let symKey = kdfa(key: seed, label: "STORAGE", contextU: name, contextV: [], bits: 128)
        let hmacKey = kdfa(key: seed, label: "INTEGRITY", contextU: [], contextV: [], bits: 256)
        let plaintext = be16(credential.count) + credential
        let encIdentity: [UInt8]
        do {
            encIdentity = Array(try AES._CFB.encrypt(plaintext, using: SymmetricKey(data: symKey),
                                                     iv: AES._CFB.IV(ivBytes: [UInt8](repeating: 0, count: 16))))
        } catch {
            throw .badCredential(reason: "AES-128-CFB failed")
        }
        let outer = Array(HMAC<SHA256>.authenticationCode(for: encIdentity + name, using: SymmetricKey(data: hmacKey)))
        let idObject = be16(outer.count) + outer + encIdentity
        let eccPoint = be16(32) + ephemeralX + be16(32) + ephemeralY
        return CredentialChallenge(credentialBlob: be16(idObject.count) + idObject, encryptedSecret: be16(eccPoint.count) + eccPoint)
    }

    /// KDFe (SP 800-56A one-step KDF with SHA-256) for 256 bits: one block.
    static func kdfe(z: [UInt8], use: [UInt8], partyU: [UInt8], partyV: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: [0, 0, 0, 1] + z + use + partyU + partyV))
    }

    /// KDFa (SP 800-108 counter mode, HMAC-SHA-256), `bits` a multiple of 8 up to 256.
    static func kdfa(key: [UInt8], label: String, contextU: [UInt8], contextV: [UInt8], bits: Int) -> [UInt8] {
        let input: [UInt8] = [0, 0, 0, 1] + Array(label.utf8) + [0] + contextU + contextV + be32(bits)
        return Array(HMAC<SHA256>.authenticationCode(for: input, using: SymmetricKey(data: key)).prefix(bits / 8))
    }

    static func be16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)] }
    static func be32(_ v: Int) -> [UInt8] { be16(v >> 16) + be16(v) }
}

extension CredentialChallenge {
    /// The EK's public point (uncompressed, 65 bytes) from its marshalled TPM2B_PUBLIC, for
    /// comparing with the key an EK certificate names.
    public static func endorsementKeyPoint(_ endorsementKeyPublic: [UInt8]) throws(AttestationError) -> [UInt8] {
        try ECCPublicArea(parsing: endorsementKeyPublic).x963
    }
}
