// The device's side of remote attestation: an attestation key (AK) in the TPM,
// quotes over the boot PCRs, and ActivateCredential for the controller's
// challenge that binds the AK to the endorsement key (EK).
//
//   endorsement hierarchy
//     └─ EK (TCG template L-2, ECC P-256, restricted decrypt; re-created from
//        │   the template when needed, never kept at a handle)
//        └─ 0x81000002  attestation key (persistent): restricted ECC P-256
//                       signing key, ECDSA/SHA-256
//   owner hierarchy
//     └─ 0x81000001  storage root key → device key (TPMIdentity)
//
// Why under the EK and not the SRK: TPM2_ActivateCredential only needs the AK
// and the EK loaded in the same TPM, so either parent works for the
// MakeCredential binding. Under the EK the AK lives in the endorsement
// hierarchy, which the owner clearing the storage hierarchy does not touch,
// and it is the arrangement the issue and Keylime use. The price is a policy
// session (PolicySecret on the endorsement hierarchy) for every use of the EK.

#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CTSS2

/// A quote as the device sends it: the TPM's own attestation structure, its
/// signature, and the PCR values the quote's digest covers.
public struct TPMQuote: Sendable, Equatable {
    /// The marshalled TPMS_ATTEST, exactly the bytes the AK signed.
    public let attest: [UInt8]
    /// ECDSA P-256 over SHA-256(attest), 32 bytes each.
    public let signatureR: [UInt8]
    public let signatureS: [UInt8]
    /// SHA-256 bank values by PCR index, read around the quote so that their
    /// digest equals the quote's pcrDigest.
    public let pcrs: [Int: [UInt8]]
}

/// The attestation key and quotes. One per process; every command runs under
/// the connection's lock and flushes the transient objects it made.
public final class TPMAttestor: Sendable {
    /// Next to the SRK (0x81000001) in the owner's persistent range.
    public static let attestationKeyHandle: UInt32 = 0x8100_0002
    /// What the controller asks for: firmware (0), boot loader (4), Secure
    /// Boot policy (7), GRUB's commands and command line (8), GRUB's files (9).
    public static let defaultPCRs = [0, 4, 7, 8, 9]

    let connection: TPMConnection
    /// The AK's ESYS handle in `connection`, valid while it is open.
    let attestationKey: ESYS_TR
    /// The AK's marshalled TPM2B_PUBLIC.
    public let attestationKeyPublic: [UInt8]
    /// The AK's name: nameAlg (SHA-256) ‖ SHA-256(TPMT_PUBLIC), what MakeCredential binds to.
    public let attestationKeyName: [UInt8]

    /// Opens the TPM at `tcti` and finds the AK at 0x81000002, creating it
    /// under the EK and making it persistent when the handle is empty.
    public convenience init(tcti: String = TPMIdentity.deviceTCTI) throws(TPMError) {
        try self.init(connection: TPMConnection(tcti: tcti))
    }

    init(connection: TPMConnection) throws(TPMError) {
        self.connection = connection
        let (ak, pub, name) = try connection.withContext { esys throws(TPMError) -> (ESYS_TR, [UInt8], [UInt8]) in
            var ak = ESYS_TR(ESYS_TR_NONE)
            if let found = try Self.persistentAK(esys) { ak = found } else { ak = try Self.createAK(esys) }
            let (pub, name) = try Self.readPublic(esys, ak, what: "attestation key")
            return (ak, pub, name)
        }
        attestationKey = ak
        attestationKeyPublic = pub
        attestationKeyName = name
    }

    /// The EK's marshalled TPM2B_PUBLIC: the key a controller's MakeCredential encrypts to.
    public func endorsementKeyPublic() throws(TPMError) -> [UInt8] {
        try connection.withContext { esys throws(TPMError) in
            try Self.withEK(esys) { ek throws(TPMError) in try Self.readPublic(esys, ek, what: "endorsement key").public }
        }
    }

    /// A quote over the SHA-256 `pcrs` with `nonce` as qualifying data, and the
    /// PCR values read just before it. A PCR extended between the read and the
    /// quote makes the digests differ: the pair is taken once more, then refused.
    public func quote(nonce: [UInt8], pcrs: [Int] = TPMAttestor.defaultPCRs) throws(TPMError) -> TPMQuote {
        guard !pcrs.isEmpty, pcrs.count <= 8, pcrs.allSatisfy({ (0..<24).contains($0) }), Set(pcrs).count == pcrs.count else {
            throw .unusable(step: "quote", reason: "PCRs \(pcrs) are not 1 to 8 distinct indexes 0-23")
        }
        guard nonce.count <= 64 else { throw .unusable(step: "quote", reason: "a \(nonce.count)-byte nonce is longer than 64 bytes") }
        let mask = pcrs.reduce(UInt32(0)) { $0 | (1 << UInt32($1)) }
        let sorted = pcrs.sorted()
        return try connection.withContext { esys throws(TPMError) -> TPMQuote in
            let ak = attestationKey
            for attempt in 1...2 {
                var values = [UInt8](repeating: 0, count: 32 * 8)
                var valuesSize = 0
                let rc = CTSS2_pcr_read(esys, mask, &values, values.count, &valuesSize)
                guard rc == TSS2_RC_SUCCESS else { throw .command(step: "reading PCRs \(sorted) (SHA-256 bank)", code: rc) }
                guard valuesSize == 32 * sorted.count else {
                    throw .unusable(step: "reading PCRs \(sorted)", reason: "the TPM returned \(valuesSize / 32) SHA-256 values")
                }
                var attest = [UInt8](repeating: 0, count: 1024)
                var attestSize = 0
                var r = [UInt8](repeating: 0, count: 32)
                var s = [UInt8](repeating: 0, count: 32)
                let rc2 = CTSS2_quote(esys, ak, nonce, nonce.count, mask, &attest, attest.count, &attestSize, &r, &s)
                guard rc2 == TSS2_RC_SUCCESS else { throw .command(step: "quoting PCRs \(sorted)", code: rc2) }
                attest.removeSubrange(attestSize...)
                var quoted = [UInt8](repeating: 0, count: 32)
                guard CTSS2_attest_pcr_digest(attest, attest.count, &quoted) == 1 else {
                    throw .unusable(step: "quote", reason: "the TPM returned an attestation that is not a SHA-256 quote")
                }
                let read = Array(values.prefix(valuesSize))
                var computed = [UInt8](repeating: 0, count: 32)
                guard SHA256(read, read.count, &computed) != nil else { throw .unusable(step: "quote", reason: "SHA-256 failed") }
                if computed == quoted {
                    var byIndex: [Int: [UInt8]] = [:]
                    for (i, index) in sorted.enumerated() { byIndex[index] = Array(read[(32 * i)..<(32 * i + 32)]) }
                    return TPMQuote(attest: attest, signatureR: r, signatureS: s, pcrs: byIndex)
                }
                if attempt == 2 { break }
            }
            throw .unusable(step: "quote", reason: "PCRs \(sorted) changed between reading and quoting, twice")
        }
    }

    /// TPM2_ActivateCredential: recovers the secret a controller encrypted to
    /// this TPM's EK for the AK's name (`credentialBlob` is a marshalled
    /// TPM2B_ID_OBJECT, `encryptedSecret` a TPM2B_ENCRYPTED_SECRET). Only a TPM
    /// holding both keys can answer, which is what binds the AK to the EK.
    public func activateCredential(credentialBlob: [UInt8], encryptedSecret: [UInt8]) throws(TPMError) -> [UInt8] {
        var blob = TPM2B_ID_OBJECT()
        var offset = 0
        guard Tss2_MU_TPM2B_ID_OBJECT_Unmarshal(credentialBlob, credentialBlob.count, &offset, &blob) == TSS2_RC_SUCCESS,
              offset == credentialBlob.count else {
            throw .unusable(step: "activating a credential", reason: "the credential blob is not a TPM2B_ID_OBJECT")
        }
        var secret = TPM2B_ENCRYPTED_SECRET()
        offset = 0
        guard Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal(encryptedSecret, encryptedSecret.count, &offset, &secret) == TSS2_RC_SUCCESS,
              offset == encryptedSecret.count else {
            throw .unusable(step: "activating a credential", reason: "the secret is not a TPM2B_ENCRYPTED_SECRET")
        }
        return try connection.withContext { esys throws(TPMError) -> [UInt8] in
            let ak = attestationKey
            return try Self.withEK(esys) { ek throws(TPMError) -> [UInt8] in
                var out = [UInt8](repeating: 0, count: 64)
                var written = 0
                let rc = CTSS2_activate_credential(esys, ak, ek, &blob, &secret, &out, out.count, &written)
                guard rc == TSS2_RC_SUCCESS else { throw .command(step: "activating the controller's credential", code: rc) }
                return Array(out.prefix(written))
            }
        }
    }

    // MARK: - Keys

    /// The AK at its persistent handle, nil when the handle is empty; a key of
    /// another shape there is an error, never overwritten.
    static func persistentAK(_ esys: OpaquePointer) throws(TPMError) -> ESYS_TR? {
        // Asked first, so a new TPM's missing AK logs no ESYS error line on the console.
        guard try TPMConnection.nvIndexDefined(esys, attestationKeyHandle, name: "the TPM") else { return nil }
        var handle = ESYS_TR(ESYS_TR_NONE)
        let rc = Esys_TR_FromTPMPublic(esys, attestationKeyHandle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                                       ESYS_TR(ESYS_TR_NONE), &handle)
        if rc != TSS2_RC_SUCCESS {
            guard CTSS2_is_handle_missing(rc) == 1 else { throw .command(step: "looking up the attestation key", code: rc) }
            return nil
        }
        var pub: UnsafeMutablePointer<TPM2B_PUBLIC>?
        let rc2 = Esys_ReadPublic(esys, handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &pub, nil, nil)
        guard rc2 == TSS2_RC_SUCCESS, let pub else { throw .command(step: "reading the attestation key", code: rc2) }
        defer { CTSS2_free_public(pub) }
        guard CTSS2_is_ak(pub) == 1 else {
            throw .unusable(step: "attestation key", reason: "handle 0x81000002 holds a key that is not a restricted P-256 ECDSA signing key")
        }
        return handle
    }

    /// Creates the AK under the EK and moves it to 0x81000002.
    static func createAK(_ esys: OpaquePointer) throws(TPMError) -> ESYS_TR {
        try withEK(esys) { ek throws(TPMError) -> ESYS_TR in
            var transient = ESYS_TR(ESYS_TR_NONE)
            let rc = CTSS2_create_load_ak(esys, ek, &transient)
            guard rc == TSS2_RC_SUCCESS else { throw .command(step: "creating the attestation key under the endorsement key", code: rc) }
            defer { _ = Esys_FlushContext(esys, transient) }
            var persistent = ESYS_TR(ESYS_TR_NONE)
            let rc2 = Esys_EvictControl(esys, ESYS_TR(ESYS_TR_RH_OWNER), transient, ESYS_TR(ESYS_TR_PASSWORD),
                                        ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), attestationKeyHandle, &persistent)
            guard rc2 == TSS2_RC_SUCCESS else { throw .command(step: "making the attestation key persistent at 0x81000002", code: rc2) }
            return persistent
        }
    }

    /// Runs `body` with the EK created from its template, flushed afterwards.
    static func withEK<T>(_ esys: OpaquePointer, _ body: (ESYS_TR) throws(TPMError) -> T) throws(TPMError) -> T {
        var ek = ESYS_TR(ESYS_TR_NONE)
        let rc = CTSS2_create_primary_ek(esys, &ek)
        guard rc == TSS2_RC_SUCCESS else { throw .command(step: "creating the endorsement key", code: rc) }
        defer { _ = Esys_FlushContext(esys, ek) }
        return try body(ek)
    }

    /// The marshalled TPM2B_PUBLIC and the name of a loaded object.
    static func readPublic(_ esys: OpaquePointer, _ handle: ESYS_TR, what: String) throws(TPMError) -> (public: [UInt8], name: [UInt8]) {
        var pub: UnsafeMutablePointer<TPM2B_PUBLIC>?
        var name: UnsafeMutablePointer<TPM2B_NAME>?
        let rc = Esys_ReadPublic(esys, handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &pub, &name, nil)
        guard rc == TSS2_RC_SUCCESS, let pub, let name else { throw .command(step: "reading the \(what)", code: rc) }
        defer { CTSS2_free_public(pub); Esys_Free(name) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        var offset = 0
        let rc2 = Tss2_MU_TPM2B_PUBLIC_Marshal(pub, &buffer, buffer.count, &offset)
        guard rc2 == TSS2_RC_SUCCESS else { throw .command(step: "marshalling the \(what)'s public part", code: rc2) }
        let nameBytes = withUnsafeBytes(of: name.pointee.name) { Array($0.prefix(Int(name.pointee.size))) }
        return (Array(buffer.prefix(offset)), nameBytes)
    }
}
