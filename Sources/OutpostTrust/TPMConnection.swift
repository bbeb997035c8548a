// One ESYS context over one TCTI ("device:/dev/tpmrm0" on a device,
// "swtpm:host=127.0.0.1,port=P" in tests), and the few commands the device
// identity needs. Every transient object is flushed before a call returns:
// without a resource manager (swtpm, /dev/tpm0) the TPM holds only three.
//
//   owner hierarchy
//     └─ 0x81000001  storage root key (persistent, standard ECC SRK template)
//          └─ device key (P-256 ECDSA), loaded from its blobs for each signature

#if canImport(Glibc)
import Glibc
#endif
import CTSS2
import Synchronization

/// An open TPM. ESYS contexts are not thread-safe, so every command runs under
/// one lock; signatures are rare (TLS handshakes, registration).
// @unchecked: the two C contexts are only touched under `lock`.
final class TPMConnection: @unchecked Sendable {
    /// Where the storage root key lives: the TCG's reserved first owner persistent handle.
    static let storageRootHandle: UInt32 = 0x8100_0001

    let tcti: String
    private let lock = Mutex(())
    private var tctiContext: OpaquePointer?
    private var esys: OpaquePointer?

    /// Connects through the TCTI loader; `tcti` as tss2 spells it.
    init(tcti: String) throws(TPMError) {
        self.tcti = tcti
        var tctiContext: OpaquePointer?
        let rc = Tss2_TctiLdr_Initialize(tcti, &tctiContext)
        guard rc == TSS2_RC_SUCCESS, let tctiContext else { throw .command(step: "opening \(tcti)", code: rc) }
        var esys: OpaquePointer?
        let rc2 = Esys_Initialize(&esys, tctiContext, nil)
        guard rc2 == TSS2_RC_SUCCESS, esys != nil else {
            var t: OpaquePointer? = tctiContext
            Tss2_TctiLdr_Finalize(&t)
            throw .command(step: "starting ESYS on \(tcti)", code: rc2)
        }
        self.tctiContext = tctiContext
        self.esys = esys
    }

    deinit {
        Esys_Finalize(&esys)
        Tss2_TctiLdr_Finalize(&tctiContext)
    }

    func withContext<T>(_ body: (OpaquePointer) throws(TPMError) -> T) throws(TPMError) -> T {
        try lock.withLock { _ throws(TPMError) -> T in
            guard let esys else { throw TPMError.unusable(step: "TPM context", reason: "closed") }
            return try body(esys)
        }
    }

    /// The storage root key's ESYS handle, made persistent first when absent.
    /// A key of another kind at that handle is an error, not overwritten.
    func storageRootKey() throws(TPMError) -> ESYS_TR {
        try withContext { esys throws(TPMError) -> ESYS_TR in
            var srk = ESYS_TR(ESYS_TR_NONE)
            // A missing handle is normal on a new TPM; asking the handle list first keeps ESYS
            // from logging an error line for it onto the device's console.
            if try Self.nvIndexDefined(esys, Self.storageRootHandle, name: "the TPM") {
                let rc = Esys_TR_FromTPMPublic(esys, Self.storageRootHandle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                                               ESYS_TR(ESYS_TR_NONE), &srk)
                guard rc == TSS2_RC_SUCCESS else { throw .command(step: "looking up the storage root key", code: rc) }
                var pub: UnsafeMutablePointer<TPM2B_PUBLIC>?
                let rc2 = Esys_ReadPublic(esys, srk, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                                          &pub, nil, nil)
                guard rc2 == TSS2_RC_SUCCESS, let pub else { throw .command(step: "reading the storage root key", code: rc2) }
                defer { CTSS2_free_public(pub) }
                guard CTSS2_is_srk(pub) == 1 else {
                    throw .unusable(step: "storage root key", reason: "handle 0x81000001 holds a key that is not an ECC P-256 storage key")
                }
                return srk
            }
            var template = TPM2B_PUBLIC()
            CTSS2_srk_template(&template)
            var transient = ESYS_TR(ESYS_TR_NONE)
            let rc3 = CTSS2_create_primary(esys, &template, &transient)
            guard rc3 == TSS2_RC_SUCCESS else { throw .command(step: "creating the storage root key", code: rc3) }
            defer { _ = Esys_FlushContext(esys, transient) }
            var persistent = ESYS_TR(ESYS_TR_NONE)
            let rc4 = Esys_EvictControl(esys, ESYS_TR(ESYS_TR_RH_OWNER), transient, ESYS_TR(ESYS_TR_PASSWORD),
                                        ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), Self.storageRootHandle, &persistent)
            guard rc4 == TSS2_RC_SUCCESS else { throw .command(step: "making the storage root key persistent", code: rc4) }
            return persistent
        }
    }

    /// A new P-256 signing key under `parent`; its public and TPM-wrapped
    /// private blobs, marshalled as TPM2B structures.
    func createSigningKey(parent: ESYS_TR) throws(TPMError) -> KeyBlobs {
        try withContext { esys throws(TPMError) -> KeyBlobs in
            var template = TPM2B_PUBLIC()
            CTSS2_signing_key_template(&template)
            var priv: UnsafeMutablePointer<TPM2B_PRIVATE>?
            var pub: UnsafeMutablePointer<TPM2B_PUBLIC>?
            let rc = CTSS2_create(esys, parent, &template, &priv, &pub)
            guard rc == TSS2_RC_SUCCESS, let priv, let pub else { throw .command(step: "creating the device key", code: rc) }
            defer { CTSS2_free_private(priv); CTSS2_free_public(pub) }
            return try KeyBlobs(public: pub.pointee, private: priv.pointee)
        }
    }

    /// Loads `blobs` under `parent`, runs `body` with the transient handle,
    /// and flushes it whatever happens.
    private func withLoadedKey<T>(_ esys: OpaquePointer, parent: ESYS_TR, _ blobs: KeyBlobs, path: String,
                                  _ body: (ESYS_TR) throws(TPMError) -> T) throws(TPMError) -> T {
        var pub = try blobs.unmarshalPublic()
        var priv = try blobs.unmarshalPrivate()
        var handle = ESYS_TR(ESYS_TR_NONE)
        let rc = Esys_Load(esys, parent, ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                           &priv, &pub, &handle)
        guard rc == TSS2_RC_SUCCESS else {
            if CTSS2_is_integrity_failure(rc) == 1 { throw .foreignKey(path: path, code: rc) }
            throw .command(step: "loading the device key from \(path)", code: rc)
        }
        defer { _ = Esys_FlushContext(esys, handle) }
        return try body(handle)
    }

    /// Proves that `blobs` load under `parent` in this TPM.
    func checkLoads(parent: ESYS_TR, _ blobs: KeyBlobs, path: String) throws(TPMError) {
        try withContext { esys throws(TPMError) in
            try withLoadedKey(esys, parent: parent, blobs, path: path) { _ throws(TPMError) in }
        }
    }

    /// ECDSA over a SHA-256 digest with the key in `blobs`: (r, s), 32 bytes each.
    func sign(digest: [UInt8], parent: ESYS_TR, _ blobs: KeyBlobs, path: String) throws(TPMError) -> (r: [UInt8], s: [UInt8]) {
        guard digest.count == 32 else { throw .unusable(step: "signing", reason: "a \(digest.count)-byte digest is not SHA-256") }
        return try withContext { esys throws(TPMError) -> (r: [UInt8], s: [UInt8]) in
            try withLoadedKey(esys, parent: parent, blobs, path: path) { key throws(TPMError) -> (r: [UInt8], s: [UInt8]) in
                var r = [UInt8](repeating: 0, count: 32)
                var s = [UInt8](repeating: 0, count: 32)
                let rc = CTSS2_sign_digest(esys, key, digest, &r, &s)
                guard rc == TSS2_RC_SUCCESS else { throw .command(step: "signing with the device key", code: rc) }
                return (r, s)
            }
        }
    }
}

/// A TPM key as stored on PERSIST: the marshalled TPM2B_PUBLIC and the
/// TPM2B_PRIVATE, which is encrypted and integrity-protected by the parent key
/// inside the TPM, so the private key is never in the clear outside it.
struct KeyBlobs: Sendable, Equatable {
    let publicBytes: [UInt8]
    let privateBytes: [UInt8]
    /// The public point, 32-byte x and y.
    let x: [UInt8]
    let y: [UInt8]

    init(public pub: TPM2B_PUBLIC, private priv: TPM2B_PRIVATE) throws(TPMError) {
        var pub = pub
        var priv = priv
        publicBytes = try Self.marshal("public") { buffer, size, offset in Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, buffer, size, offset) }
        privateBytes = try Self.marshal("private") { buffer, size, offset in Tss2_MU_TPM2B_PRIVATE_Marshal(&priv, buffer, size, offset) }
        (x, y) = try Self.point(pub)
    }

    init(publicBytes: [UInt8], privateBytes: [UInt8], path: String) throws(TPMError) {
        self.publicBytes = publicBytes
        self.privateBytes = privateBytes
        var pub = TPM2B_PUBLIC()
        var offset = 0
        let rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(publicBytes, publicBytes.count, &offset, &pub)
        guard rc == TSS2_RC_SUCCESS, offset == publicBytes.count else {
            throw .unusable(step: "reading \(path)", reason: "not a TPM2B_PUBLIC (\(TPMError.decode(rc)))")
        }
        (x, y) = try Self.point(pub)
        _ = try unmarshalPrivate()
    }

    func unmarshalPublic() throws(TPMError) -> TPM2B_PUBLIC {
        var pub = TPM2B_PUBLIC()
        var offset = 0
        let rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(publicBytes, publicBytes.count, &offset, &pub)
        guard rc == TSS2_RC_SUCCESS else { throw .command(step: "unmarshalling the device key's public part", code: rc) }
        return pub
    }

    func unmarshalPrivate() throws(TPMError) -> TPM2B_PRIVATE {
        var priv = TPM2B_PRIVATE()
        var offset = 0
        let rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(privateBytes, privateBytes.count, &offset, &priv)
        guard rc == TSS2_RC_SUCCESS, offset == privateBytes.count else {
            throw .unusable(step: "reading the device key's private blob", reason: "not a TPM2B_PRIVATE (\(TPMError.decode(rc)))")
        }
        return priv
    }

    private static func point(_ pub: TPM2B_PUBLIC) throws(TPMError) -> ([UInt8], [UInt8]) {
        var pub = pub
        var x = [UInt8](repeating: 0, count: 32)
        var y = [UInt8](repeating: 0, count: 32)
        guard CTSS2_ecc_point(&pub, &x, &y) == 1 else {
            throw .unusable(step: "device key", reason: "the public part is not a P-256 point")
        }
        return (x, y)
    }

    private static func marshal(_ what: String,
                                _ body: (UnsafeMutablePointer<UInt8>, Int, UnsafeMutablePointer<Int>) -> TSS2_RC) throws(TPMError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var offset = 0
        let rc = buffer.withUnsafeMutableBufferPointer { b -> TSS2_RC in
            // A non-empty array always has a base address; 1 is TSS2_BASE_RC_GENERAL_FAILURE.
            guard let base = b.baseAddress else { return 1 }
            return body(base, b.count, &offset)
        }
        guard rc == TSS2_RC_SUCCESS else { throw .command(step: "marshalling the device key's \(what) part", code: rc) }
        return Array(buffer.prefix(offset))
    }
}
