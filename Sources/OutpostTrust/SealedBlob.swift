// The vault's sealed object as stored on PERSIST: the TPM's own marshalled
// public and private parts behind a magic, nothing else. The private part is
// encrypted and integrity-protected by the storage root key inside the TPM,
// so the file is useless to any other TPM; it is still written 0600.
//
//   +0   magic          "OPVAULT1" (8 bytes)
//   +8   TPM2B_PUBLIC   u16 BE size ‖ TPMT_PUBLIC (KEYEDHASH sealed data, authPolicy)
//   +n   TPM2B_PRIVATE  u16 BE size ‖ the wrapped sensitive area
//        (end of file: nothing may follow)

#if canImport(Glibc)
import Glibc
#endif
import CTSS2
import OutpostBundle
import OutpostPlatform

/// A secret sealed by `TPMVault.seal`: load it with `TPMVault.unseal`, in this TPM only.
public struct SealedBlob: Sendable, Equatable {
    public static let magic: [UInt8] = Array("OPVAULT1".utf8)

    /// The marshalled TPM2B_PUBLIC (with its size).
    public let publicBytes: [UInt8]
    /// The marshalled TPM2B_PRIVATE (with its size).
    public let privateBytes: [UInt8]
    /// The policy the TPM demands before it unseals: what the vault was sealed to.
    public let authPolicy: TPMPolicyDigest
    /// TPMA_OBJECT of the sealed object, as the TPM will enforce it.
    public let objectAttributes: UInt32

    /// Checks that the two parts parse as tss2 marshals them and that the
    /// public part is a sealed-data object with a SHA-256 policy.
    public init(publicBytes: [UInt8], privateBytes: [UInt8]) throws(TPMError) {
        var pub = TPM2B_PUBLIC()
        var offset = 0
        guard Tss2_MU_TPM2B_PUBLIC_Unmarshal(publicBytes, publicBytes.count, &offset, &pub) == TSS2_RC_SUCCESS,
              offset == publicBytes.count else {
            throw .vault(step: "sealed blob", reason: "the public part is not a TPM2B_PUBLIC", code: nil)
        }
        var priv = TPM2B_PRIVATE()
        offset = 0
        guard Tss2_MU_TPM2B_PRIVATE_Unmarshal(privateBytes, privateBytes.count, &offset, &priv) == TSS2_RC_SUCCESS,
              offset == privateBytes.count else {
            throw .vault(step: "sealed blob", reason: "the private part is not a TPM2B_PRIVATE", code: nil)
        }
        var policy = [UInt8](repeating: 0, count: TPMPolicyDigest.size)
        var attributes: UInt32 = 0
        guard CTSS2_is_sealed_data(&pub, &policy, &attributes) == 1 else {
            throw .vault(step: "sealed blob", reason: "the public part is not a sealed-data object with a SHA-256 policy", code: nil)
        }
        self.publicBytes = publicBytes
        self.privateBytes = privateBytes
        do { authPolicy = try TPMPolicyDigest(bytes: policy) } catch {
            throw .vault(step: "sealed blob", reason: error.description, code: nil)
        }
        objectAttributes = attributes
    }

    /// Parses the file format above; anything else is an error, never a crash.
    public init(encoded bytes: [UInt8]) throws(TPMError) {
        guard bytes.count >= Self.magic.count, Array(bytes.prefix(Self.magic.count)) == Self.magic else {
            throw .vault(step: "sealed blob", reason: "not a vault blob (no OPVAULT1 magic)", code: nil)
        }
        var offset = Self.magic.count
        func sized(_ what: String) throws(TPMError) -> [UInt8] {
            guard bytes.count - offset >= 2 else {
                throw .vault(step: "sealed blob", reason: "truncated before the \(what) part's size", code: nil)
            }
            let size = Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
            guard bytes.count - offset - 2 >= size else {
                throw .vault(step: "sealed blob", reason: "the \(what) part says \(size) bytes, \(bytes.count - offset - 2) follow", code: nil)
            }
            defer { offset += 2 + size }
            return Array(bytes[offset..<(offset + 2 + size)])
        }
        let pub = try sized("public")
        let priv = try sized("private")
        guard offset == bytes.count else {
            throw .vault(step: "sealed blob", reason: "\(bytes.count - offset) bytes after the private part", code: nil)
        }
        try self.init(publicBytes: pub, privateBytes: priv)
    }

    public var encoded: [UInt8] { Self.magic + publicBytes + privateBytes }

    /// Writes the blob to `path` atomically (the old blob or the new, never a
    /// torn one), mode 0600.
    public func save(to path: String) throws(TPMError) {
        do { try FileIO.writeAtomically(encoded, to: path, mode: 0o600) } catch {
            throw .vault(step: "saving the sealed blob", reason: error.description, code: nil)
        }
    }

    /// Reads a blob that `save` wrote; nil when there is no file at `path`.
    public static func load(from path: String) throws(TPMError) -> SealedBlob? {
        let bytes: [UInt8]?
        do { bytes = try FileIO.readIfPresent(path, limit: 64 * 1024) } catch {
            throw .vault(step: "reading the sealed blob", reason: error.description, code: nil)
        }
        guard let bytes else { return nil }
        do { return try SealedBlob(encoded: bytes) } catch {
            if case .vault(_, let reason, _) = error { throw .vault(step: "reading \(path)", reason: reason, code: nil) }
            throw error
        }
    }
}
