// Reading NV indices, for the EK certificate a TPM maker stores in NV (TCG EK
// Credential Profile 2.0, section 2.2.1.5):
//
//   NV_ReadPublic(index) ──▶ dataSize, attributes (nothing there: no certificate)
//   GetCapability(TPM_PT_NV_BUFFER_MAX) ──▶ the largest NV_Read this TPM answers
//   NV_Read(offset 0, n) ‖ NV_Read(offset n, n) ‖ … ──▶ dataSize bytes
//
// A certificate is often larger than one NV_Read (1–2 KiB against buffers of
// 512 or 1024 bytes on some parts), so the read is chunked; the chunk plan is a
// pure function so that its arithmetic is tested without such a TPM.

#if canImport(Glibc)
import Glibc
#endif
import CTSS2

/// The NV indices of the TCG EK Credential Profile's low range.
public enum EKCertificateIndex {
    /// The certificate of the ECC NIST P-256 EK (template L-2), the EK this project uses.
    public static let eccP256: UInt32 = 0x01C0_000A
    /// The certificate of the RSA 2048 EK (template L-1).
    public static let rsa2048: UInt32 = 0x01C0_0002
}

/// The NV_Read calls that read `size` bytes when one call returns at most `bufferMax`.
public enum NVReadPlan {
    public struct Chunk: Equatable, Sendable {
        public let offset: Int
        public let count: Int
    }

    /// Consecutive chunks covering 0..<size, none larger than `bufferMax` (at least 1);
    /// empty for an empty index.
    public static func chunks(size: Int, bufferMax: Int) -> [Chunk] {
        let step = max(1, bufferMax)
        return stride(from: 0, to: max(0, size), by: step).map { Chunk(offset: $0, count: min(step, size - $0)) }
    }
}

extension TPMConnection {
    /// TPM2_PT_NV_BUFFER_MAX: PT_FIXED + 44 = 0x100 + 44, spelled out because the header
    /// builds it from nested cast macros.
    static let nvBufferMaxProperty: UInt32 = 0x12C

    /// TPM_PT_NV_BUFFER_MAX from TPM2_GetCapability, capped at what one
    /// TPM2B_MAX_NV_BUFFER holds in this TSS.
    func nvBufferMax() throws(TPMError) -> Int {
        try withContext { esys throws(TPMError) -> Int in
            var more: TPMI_YES_NO = 0
            var data: UnsafeMutablePointer<TPMS_CAPABILITY_DATA>?
            let rc = Esys_GetCapability(esys, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                                        TPM2_CAP(TPM2_CAP_TPM_PROPERTIES), Self.nvBufferMaxProperty, 1, &more, &data)
            guard rc == TSS2_RC_SUCCESS, let data else { throw .command(step: "asking for TPM_PT_NV_BUFFER_MAX", code: rc) }
            defer { Esys_Free(data) }
            let properties = data.pointee.data.tpmProperties
            guard properties.count >= 1, properties.tpmProperty.0.property == Self.nvBufferMaxProperty,
                  properties.tpmProperty.0.value > 0 else {
                throw .unusable(step: "asking for TPM_PT_NV_BUFFER_MAX", reason: "the TPM did not report it")
            }
            return min(Int(properties.tpmProperty.0.value), Int(TPM2_MAX_NV_BUFFER_SIZE))
        }
    }

    /// Whether `index` (an NV index or a persistent object's handle) is in the TPM's list of
    /// handles (TPM2_CAP_HANDLES from it, one).
    static func nvIndexDefined(_ esys: OpaquePointer, _ index: UInt32, name: String) throws(TPMError) -> Bool {
        var more: TPMI_YES_NO = 0
        var data: UnsafeMutablePointer<TPMS_CAPABILITY_DATA>?
        let rc = Esys_GetCapability(esys, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                                    TPM2_CAP(TPM2_CAP_HANDLES), index, 1, &more, &data)
        guard rc == TSS2_RC_SUCCESS, let data else { throw .command(step: "listing NV handles from \(name)", code: rc) }
        defer { Esys_Free(data) }
        let handles = data.pointee.data.handles
        return handles.count >= 1 && handles.handle.0 == index
    }

    /// The contents of NV index `index`, read in chunks of at most `bufferMax`;
    /// nil when the index is not defined or was never written. Authorised as the
    /// index allows reading: its own (empty) auth, else the owner's.
    func readNV(index: UInt32, bufferMax: Int) throws(TPMError) -> [UInt8]? {
        let name = "NV index 0x\(String(index, radix: 16, uppercase: true))"
        return try withContext { esys throws(TPMError) -> [UInt8]? in
            // Asked first through the handle list: TR_FromTPMPublic on a missing index would
            // have tss2 log errors on the console of every device whose TPM has no certificate.
            guard try Self.nvIndexDefined(esys, index, name: name) else { return nil }
            var handle = ESYS_TR(ESYS_TR_NONE)
            let rc = Esys_TR_FromTPMPublic(esys, index, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &handle)
            if rc != TSS2_RC_SUCCESS {
                guard CTSS2_is_handle_missing(rc) == 1 else { throw .command(step: "looking up \(name)", code: rc) }
                return nil
            }
            defer { _ = Esys_TR_Close(esys, &handle) }
            var pub: UnsafeMutablePointer<TPM2B_NV_PUBLIC>?
            let rc2 = Esys_NV_ReadPublic(esys, handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &pub, nil)
            guard rc2 == TSS2_RC_SUCCESS, let pub else { throw .command(step: "NV_ReadPublic of \(name)", code: rc2) }
            let attributes = pub.pointee.nvPublic.attributes
            let size = Int(pub.pointee.nvPublic.dataSize)
            Esys_Free(pub)
            guard attributes & TPMA_NV(TPMA_NV_WRITTEN) != 0 else { return nil }
            let auth: ESYS_TR
            if attributes & TPMA_NV(TPMA_NV_AUTHREAD) != 0 {
                auth = handle
            } else if attributes & TPMA_NV(TPMA_NV_OWNERREAD) != 0 {
                auth = ESYS_TR(ESYS_TR_RH_OWNER)
            } else {
                throw .unusable(step: "reading \(name)", reason: "neither its own nor the owner's authorisation may read it")
            }
            var out: [UInt8] = []
            out.reserveCapacity(size)
            for chunk in NVReadPlan.chunks(size: size, bufferMax: bufferMax) {
                var data: UnsafeMutablePointer<TPM2B_MAX_NV_BUFFER>?
                let rc3 = Esys_NV_Read(esys, auth, handle, ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                                       UInt16(chunk.count), UInt16(chunk.offset), &data)
                guard rc3 == TSS2_RC_SUCCESS, let data else {
                    throw .command(step: "NV_Read of \(name) at \(chunk.offset) (\(chunk.count) of \(size) bytes)", code: rc3)
                }
                let got = Int(data.pointee.size)
                let bytes = withUnsafeBytes(of: data.pointee.buffer) { Array($0.prefix(got)) }
                Esys_Free(data)
                guard got == chunk.count else {
                    throw .unusable(step: "NV_Read of \(name) at \(chunk.offset)", reason: "asked for \(chunk.count) bytes, got \(got)")
                }
                out += bytes
            }
            return out
        }
    }
}

extension TPMAttestor {
    /// The DER certificate of this project's EK (ECC P-256, index 0x01C0000A) that the TPM's
    /// maker stored; nil when the TPM has none. Whether it names the EK and chains to a maker's
    /// CA is the controller's to check.
    public func endorsementCertificate() throws(TPMError) -> [UInt8]? {
        try connection.readNV(index: EKCertificateIndex.eccP256, bufferMax: try connection.nvBufferMax())
    }
}
