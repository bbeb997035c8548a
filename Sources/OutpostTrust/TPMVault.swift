// The vault's TPM side on the device (docs/vault.md): the security-version
// floor in an NV counter, the sealed object, and the unlock session that
// trusts whatever policy the release key signed. OutpostBundle's
// VaultPolicy computes every digest; here the TPM checks them.
//
//   owner hierarchy
//     ├─ 0x01800030  floor: NV counter (VaultPolicy.floorIndex), owner read/write, empty auth
//     └─ 0x81000001  storage root key
//          └─ sealed object (KEYEDHASH): authPolicy = VaultPolicy.sealing, no userWithAuth
//
//   unseal, one policy session (salted with the SRK, responses encrypted):
//     PolicyNV(floor ≤ securityVersion) → PolicyPCR{8,9}            digest = approved
//     LoadExternal(release key, owner) → VerifySignature(aHash) → ticket; flush the key
//     PolicyAuthorize(approved, ref, key name, ticket) → PolicyPCR{0,7}
//     Load(sealed object) → Unseal(session); flush everything

#if canImport(Glibc)
import Glibc
#endif
import CTSS2
import OutpostBundle

/// The vault's TPM operations. One per process next to the identity and the
/// attestor; every command runs under the connection's lock and flushes the
/// transient objects and sessions it made, on every path.
public final class TPMVault: Sendable {
    /// The firmware PCRs the sealed object's policy holds literally.
    public static let sealedPCRs = [0, 7]
    /// The slot PCRs the release key's approved policies predict.
    public static let slotPCRs = [8, 9]
    /// How far one `raiseFloor` may move the floor: each step is an NV write,
    /// and a jump of thousands is a wrong version, not a release.
    public static let maximumRaise: UInt64 = 1000
    /// The largest secret a sealed-data object holds (MAX_SYM_DATA).
    public static let maximumSecret = 128

    let connection: TPMConnection
    /// The storage root key's ESYS handle, the sealed object's parent and the session's salt key.
    let storageRootKey: ESYS_TR

    /// Opens the TPM at `tcti` and finds (or makes) the storage root key.
    public convenience init(tcti: String = TPMIdentity.deviceTCTI) throws(TPMError) {
        try self.init(connection: TPMConnection(tcti: tcti))
    }

    init(connection: TPMConnection) throws(TPMError) {
        self.connection = connection
        storageRootKey = try connection.storageRootKey()
    }

    // MARK: - The security-version floor

    /// The floor's value, nil when the index is not defined (not enrolled).
    /// An index defined but never incremented (enrolment cut short) is an error:
    /// `defineFloor` finishes it.
    public func readFloor() throws(TPMError) -> UInt64? {
        try connection.withContext { esys throws(TPMError) -> UInt64? in
            guard var nv = try Self.openFloor(esys) else { return nil }
            defer { _ = Esys_TR_Close(esys, &nv) }
            return try Self.readCounter(esys, nv, step: "reading the floor")
        }
    }

    /// Defines the floor counter with exactly `VaultPolicy.floorIndex`'s
    /// template (without `written`), increments it once so that PolicyNV can
    /// use it, checks that the TPM's name for it is the one the builder
    /// computed, and returns its value. Idempotent: on an index that is
    /// already the floor it returns the current value without incrementing
    /// (after the one increment, if an earlier enrolment stopped before it);
    /// an index of another shape at the handle is refused, never replaced.
    public func defineFloor() throws(TPMError) -> UInt64 {
        let template = try Self.floorTemplate()
        let unwritten = TPMNVAttributes(rawValue: template.attributes.rawValue & ~TPMNVAttributes.written.rawValue)
        return try connection.withContext { esys throws(TPMError) -> UInt64 in
            var nv = ESYS_TR(ESYS_TR_NONE)
            if let existing = try Self.openFloor(esys) {
                nv = existing
            } else {
                let rc = CTSS2_nv_define(esys, VaultPolicy.floorHandle, unwritten.rawValue, template.dataSize, &nv)
                guard rc == TSS2_RC_SUCCESS else {
                    throw .vault(step: "NV_DefineSpace", reason: "defining the floor at \(Self.floorHandleText)", code: rc)
                }
            }
            defer { _ = Esys_TR_Close(esys, &nv) }
            var (attributes, name) = try Self.readPublic(esys, nv)
            if attributes == unwritten.rawValue {
                let rc = CTSS2_nv_increment(esys, nv)
                guard rc == TSS2_RC_SUCCESS else { throw .vault(step: "NV_Increment", reason: "writing the new floor", code: rc) }
                (attributes, name) = try Self.readPublic(esys, nv)
            }
            guard name == template.name else {
                throw .vault(step: "NV_ReadPublic",
                             reason: "\(Self.floorHandleText) holds an index of another shape (attributes 0x\(String(attributes, radix: 16)), "
                                 + "name \(hex(name)), the floor's is \(hex(template.name))); an owner must remove it",
                             code: nil)
            }
            return try Self.readCounter(esys, nv, step: "reading the floor")
        }
    }

    /// Increments the floor until it is at least `target` and returns its
    /// value; never lowers it (a TPM counter cannot go down). Refuses a
    /// raise of more than `maximumRaise` steps before writing anything.
    public func raiseFloor(to target: UInt64) throws(TPMError) -> UInt64 {
        try connection.withContext { esys throws(TPMError) -> UInt64 in
            guard var nv = try Self.openFloor(esys) else {
                throw .vault(step: "raising the floor", reason: "the floor \(Self.floorHandleText) is not defined (not enrolled)", code: nil)
            }
            defer { _ = Esys_TR_Close(esys, &nv) }
            var current = try Self.readCounter(esys, nv, step: "reading the floor")
            guard current < target else { return current }
            guard target - current <= Self.maximumRaise else {
                throw .vault(step: "raising the floor",
                             reason: "from \(current) to \(target) is \(target - current) increments, more than \(Self.maximumRaise); refused",
                             code: nil)
            }
            for _ in 0..<(target - current) {
                let rc = CTSS2_nv_increment(esys, nv)
                guard rc == TSS2_RC_SUCCESS else {
                    throw .vault(step: "NV_Increment", reason: "raising the floor towards \(target)", code: rc)
                }
            }
            current = try Self.readCounter(esys, nv, step: "reading the raised floor")
            guard current >= target else {
                throw .vault(step: "raising the floor", reason: "the floor is \(current) after the increments, not \(target)", code: nil)
            }
            return current
        }
    }

    // MARK: - PCRs

    /// The SHA-256 bank values of `indices` (0–23, distinct), by index.
    public func readPCRs(_ indices: [Int]) throws(TPMError) -> [Int: [UInt8]] {
        try Self.checkPCRs(indices, step: "reading PCRs")
        return try connection.withContext { esys throws(TPMError) in try Self.pcrValues(esys, indices) }
    }

    // MARK: - Sealing

    /// Seals `secret` (1–128 bytes) under the storage root key so that only a
    /// session satisfying `authPolicy` unseals it: no userWithAuth, so no
    /// password; adminWithPolicy, so no password for administration either.
    /// The secret travels to the TPM encrypted (a session salted with the SRK).
    public func seal(secret: [UInt8], authPolicy: TPMPolicyDigest) throws(TPMError) -> SealedBlob {
        guard (1...Self.maximumSecret).contains(secret.count) else {
            throw .vault(step: "sealing", reason: "a \(secret.count)-byte secret; a sealed object holds 1–\(Self.maximumSecret)", code: nil)
        }
        let parent = storageRootKey
        return try connection.withContext { esys throws(TPMError) -> SealedBlob in
            var session = ESYS_TR(ESYS_TR_NONE)
            let rcSession = CTSS2_start_encrypting_hmac_session(esys, parent, &session)
            guard rcSession == TSS2_RC_SUCCESS else {
                throw .vault(step: "StartAuthSession", reason: "starting the session that encrypts the secret", code: rcSession)
            }
            defer { _ = Esys_FlushContext(esys, session) }
            var priv: UnsafeMutablePointer<TPM2B_PRIVATE>?
            var pub: UnsafeMutablePointer<TPM2B_PUBLIC>?
            let rc = CTSS2_seal(esys, parent, session, authPolicy.bytes, secret, secret.count, &priv, &pub)
            guard rc == TSS2_RC_SUCCESS, let priv, let pub else {
                throw .vault(step: "Create", reason: "sealing the secret under the storage root key", code: rc)
            }
            defer { CTSS2_free_private(priv); CTSS2_free_public(pub) }
            let publicBytes = try Self.marshal("public") { Tss2_MU_TPM2B_PUBLIC_Marshal(pub, $0, $1, $2) }
            let privateBytes = try Self.marshal("private") { Tss2_MU_TPM2B_PRIVATE_Marshal(priv, $0, $1, $2) }
            return try SealedBlob(publicBytes: publicBytes, privateBytes: privateBytes)
        }
    }

    // MARK: - Unsealing

    /// Unseals `blob` in one policy session: the floor is at most
    /// `securityVersion`, PCR 8/9 give `approved`, the release key signed
    /// it, and PCR 0/7 (`sealedPCRs`) are the ones sealed at enrolment. The
    /// TPM decides each step; a refusal names the step and what it means.
    public func unseal(_ blob: SealedBlob, approved: ApprovedPolicy, signature: ApprovedPolicySignature,
                       releaseKey: TPMVerificationKey, securityVersion: UInt64,
                       sealedPCRs: [Int] = TPMVault.sealedPCRs) throws(TPMError) -> [UInt8] {
        try Self.checkPCRs(sealedPCRs, step: "unsealing")
        var operand: [UInt8] = []
        for shift in stride(from: 56, through: 0, by: -8) { operand.append(UInt8(truncatingIfNeeded: securityVersion >> UInt64(shift))) }
        let salt = storageRootKey
        return try connection.withContext { esys throws(TPMError) -> [UInt8] in
            guard var nv = try Self.openFloor(esys) else {
                throw .vault(step: "PolicyNV", reason: "the security floor \(Self.floorHandleText) is not defined on this TPM (not enrolled)",
                             code: nil)
            }
            defer { _ = Esys_TR_Close(esys, &nv) }
            var session = ESYS_TR(ESYS_TR_NONE)
            let rc = CTSS2_start_policy_session(esys, salt, &session)
            guard rc == TSS2_RC_SUCCESS else { throw .vault(step: "StartAuthSession", reason: "starting the policy session", code: rc) }
            defer { _ = Esys_FlushContext(esys, session) }

            let rcNV = CTSS2_policy_nv(esys, nv, session, operand, operand.count, 0, UInt16(TPM2_EO_UNSIGNED_LE))
            guard rcNV == TSS2_RC_SUCCESS else { throw Self.policyNVFailure(esys, nv, rcNV, securityVersion: securityVersion) }
            let rcSlot = CTSS2_policy_pcr(esys, session, Self.mask(Self.slotPCRs))
            guard rcSlot == TSS2_RC_SUCCESS else { throw .vault(step: "PolicyPCR", reason: "PCR 8/9 (SHA-256)", code: rcSlot) }

            let ticket = try Self.verify(esys, approved: approved, signature: signature, releaseKey: releaseKey)
            defer { CTSS2_free_ticket(ticket) }
            let rcAuthorize = CTSS2_policy_authorize(esys, session, approved.policy.bytes, approved.policyRef, approved.policyRef.count,
                                                     releaseKey.name, releaseKey.name.count, ticket)
            guard rcAuthorize == TSS2_RC_SUCCESS else {
                throw Self.policyAuthorizeFailure(rcAuthorize, securityVersion: securityVersion)
            }
            let rcSealed = CTSS2_policy_pcr(esys, session, Self.mask(sealedPCRs))
            guard rcSealed == TSS2_RC_SUCCESS else { throw .vault(step: "PolicyPCR", reason: "PCR \(Self.list(sealedPCRs)) (SHA-256)", code: rcSealed) }

            var item = ESYS_TR(ESYS_TR_NONE)
            let rcLoad = CTSS2_load_blobs(esys, salt, blob.publicBytes, blob.publicBytes.count, blob.privateBytes, blob.privateBytes.count, &item)
            guard rcLoad == TSS2_RC_SUCCESS else {
                if CTSS2_is_integrity_failure(rcLoad) == 1 {
                    throw .vault(step: "Load", reason: "the sealed blob was made by another TPM or under another storage root key", code: rcLoad)
                }
                throw .vault(step: "Load", reason: "loading the sealed blob under the storage root key", code: rcLoad)
            }
            defer { _ = Esys_FlushContext(esys, item) }
            var out = [UInt8](repeating: 0, count: 256)
            defer { for i in out.indices { out[i] = 0 } }
            var written = 0
            let rcUnseal = CTSS2_unseal(esys, item, session, &out, out.count, &written)
            guard rcUnseal == TSS2_RC_SUCCESS else {
                throw Self.unsealFailure(esys, rcUnseal, blob: blob, releaseKey: releaseKey, sealedPCRs: sealedPCRs)
            }
            return Array(out.prefix(written))
        }
    }

    /// LoadExternal of the release key with TPMVerificationKey's exact template
    /// (its name is what the sealed policy's PolicyAuthorize names), then
    /// VerifySignature of the approved policy's aHash. The key is flushed
    /// before returning; the caller frees the ticket.
    private static func verify(_ esys: OpaquePointer, approved: ApprovedPolicy, signature: ApprovedPolicySignature,
                               releaseKey: TPMVerificationKey) throws(TPMError) -> UnsafeMutablePointer<TPMT_TK_VERIFIED> {
        var key = ESYS_TR(ESYS_TR_NONE)
        let sized = releaseKey.sizedPublic
        let rc = CTSS2_load_external(esys, sized, sized.count, &key)
        guard rc == TSS2_RC_SUCCESS else { throw .vault(step: "LoadExternal", reason: "loading the release key", code: rc) }
        defer { _ = Esys_FlushContext(esys, key) }
        var name = [UInt8](repeating: 0, count: 68)
        var nameSize = 0
        let rcName = CTSS2_object_name(esys, key, &name, &nameSize)
        guard rcName == TSS2_RC_SUCCESS else { throw .vault(step: "LoadExternal", reason: "reading the release key's name", code: rcName) }
        guard Array(name.prefix(nameSize)) == releaseKey.name else {
            throw .vault(step: "LoadExternal", reason: "the TPM names the release key \(hex(Array(name.prefix(nameSize)))), "
                             + "the policy calculator \(hex(releaseKey.name))", code: nil)
        }
        var ticket: UnsafeMutablePointer<TPMT_TK_VERIFIED>?
        let tpmSignature = signature.tpmSignature
        let rcVerify = CTSS2_verify_signature(esys, key, approved.aHash, tpmSignature, tpmSignature.count, &ticket)
        guard rcVerify == TSS2_RC_SUCCESS, let ticket else {
            if ResponseCode(rcVerify).format1 == ResponseCode.signature {
                throw .vault(step: "VerifySignature", reason: "the approved policy is not signed by the release key the vault was sealed to",
                             code: rcVerify)
            }
            throw .vault(step: "VerifySignature", reason: "checking the approved policy's signature", code: rcVerify)
        }
        return ticket
    }

    // MARK: - What a refusal means

    private static func policyNVFailure(_ esys: OpaquePointer, _ nv: ESYS_TR, _ rc: UInt32, securityVersion: UInt64) -> TPMError {
        let code = ResponseCode(rc)
        if code.format0 == ResponseCode.policy || code.format1 == ResponseCode.value {
            let floor = (try? readCounter(esys, nv, step: "reading the floor")).map { " \($0)" } ?? ""
            return .vault(step: "PolicyNV",
                          reason: "the security floor\(floor) is above this slot's security version \(securityVersion) (rollback refused)",
                          code: rc)
        }
        if code.format0 == ResponseCode.nvUninitialized {
            return .vault(step: "PolicyNV", reason: "the floor \(floorHandleText) was defined but never written (enrolment cut short)", code: rc)
        }
        return .vault(step: "PolicyNV", reason: "comparing the floor with security version \(securityVersion)", code: rc)
    }

    private static func policyAuthorizeFailure(_ rc: UInt32, securityVersion: UInt64) -> TPMError {
        let code = ResponseCode(rc)
        if code.format1 == ResponseCode.value && code.parameter == 1 {
            return .vault(step: "PolicyAuthorize",
                          reason: "PCR 8/9 do not match the approved policy of this slot (or it was approved for another security version than \(securityVersion))",
                          code: rc)
        }
        if code.format1 == ResponseCode.value || code.format1 == ResponseCode.ticket {
            return .vault(step: "PolicyAuthorize", reason: "the approved policy is not signed by the release key the vault was sealed to", code: rc)
        }
        return .vault(step: "PolicyAuthorize", reason: "authorising the approved policy", code: rc)
    }

    /// A policy failure at Unseal after PolicyAuthorize held: the part the
    /// device measured itself, PCR 0/7, or the release key, differs from
    /// enrolment. Tells which by recomputing the sealing policy from the PCRs now.
    private static func unsealFailure(_ esys: OpaquePointer, _ rc: UInt32, blob: SealedBlob, releaseKey: TPMVerificationKey,
                                      sealedPCRs: [Int]) -> TPMError {
        guard ResponseCode(rc).format1 == ResponseCode.policyFail else {
            return .vault(step: "Unseal", reason: "unsealing the vault key", code: rc)
        }
        let sealed = "PCR \(list(sealedPCRs))"
        guard sealedPCRs == TPMVault.sealedPCRs, let pcrs = try? pcrValues(esys, sealedPCRs),
              let now = try? VaultPolicy.sealing(releaseKey: releaseKey, pcr0: pcrs[0] ?? [], pcr7: pcrs[7] ?? []) else {
            return .vault(step: "Unseal", reason: "policy check failed: \(sealed) changed since enrolment, or the vault was sealed to another release key",
                          code: rc)
        }
        if now == blob.authPolicy {
            return .vault(step: "Unseal", reason: "policy check failed although \(sealed) and the release key are the enrolled ones", code: rc)
        }
        return .vault(step: "Unseal", reason: "policy check failed: \(sealed) changed since enrolment (or the vault was sealed to another release key)",
                      code: rc)
    }

    // MARK: - Helpers (under the connection's lock)

    static let floorHandleText = "0x0" + String(VaultPolicy.floorHandle, radix: 16)

    static func floorTemplate() throws(TPMError) -> TPMNVIndexPublic {
        do { return try VaultPolicy.floorIndex } catch { throw .vault(step: "floor template", reason: error.description, code: nil) }
    }

    /// The floor's ESYS handle, nil when nothing is defined at the handle; the caller closes it.
    static func openFloor(_ esys: OpaquePointer) throws(TPMError) -> ESYS_TR? {
        // Asked first: ESYS logs an error line of its own for a lookup of a missing index, and on
        // a device that line lands on the console at every enrolment.
        guard try TPMConnection.nvIndexDefined(esys, VaultPolicy.floorHandle, name: "the TPM") else { return nil }
        var nv = ESYS_TR(ESYS_TR_NONE)
        let rc = Esys_TR_FromTPMPublic(esys, VaultPolicy.floorHandle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                                       ESYS_TR(ESYS_TR_NONE), &nv)
        if rc == TSS2_RC_SUCCESS { return nv }
        if CTSS2_is_handle_missing(rc) == 1 { return nil }
        throw .vault(step: "NV_ReadPublic", reason: "looking up the floor \(floorHandleText)", code: rc)
    }

    static func readPublic(_ esys: OpaquePointer, _ nv: ESYS_TR) throws(TPMError) -> (attributes: UInt32, name: [UInt8]) {
        var attributes: UInt32 = 0
        var name = [UInt8](repeating: 0, count: 68)
        var size = 0
        let rc = CTSS2_nv_read_public(esys, nv, &attributes, &name, &size)
        guard rc == TSS2_RC_SUCCESS else { throw .vault(step: "NV_ReadPublic", reason: "reading the floor's public area", code: rc) }
        return (attributes, Array(name.prefix(size)))
    }

    static func readCounter(_ esys: OpaquePointer, _ nv: ESYS_TR, step: String) throws(TPMError) -> UInt64 {
        var value: UInt64 = 0
        let rc = CTSS2_nv_read_counter(esys, nv, &value)
        guard rc == TSS2_RC_SUCCESS else {
            if ResponseCode(rc).format0 == ResponseCode.nvUninitialized {
                throw .vault(step: step, reason: "the floor \(floorHandleText) was defined but never written (run the enrolment again)", code: rc)
            }
            throw .vault(step: step, reason: "NV_Read of \(floorHandleText)", code: rc)
        }
        return value
    }

    static func checkPCRs(_ indices: [Int], step: String) throws(TPMError) {
        guard !indices.isEmpty, indices.allSatisfy({ (0..<24).contains($0) }), Set(indices).count == indices.count else {
            throw .vault(step: step, reason: "PCRs \(indices) are not distinct indexes 0-23", code: nil)
        }
    }

    static func mask(_ indices: [Int]) -> UInt32 { indices.reduce(UInt32(0)) { $0 | (1 << UInt32($1)) } }

    static func list(_ indices: [Int]) -> String { indices.map(String.init).joined(separator: "/") }

    /// PCR_Read in groups of 8 (one reply holds at most 8 SHA-256 values).
    static func pcrValues(_ esys: OpaquePointer, _ indices: [Int]) throws(TPMError) -> [Int: [UInt8]] {
        let sorted = indices.sorted()
        var byIndex: [Int: [UInt8]] = [:]
        for start in stride(from: 0, to: sorted.count, by: 8) {
            let group = Array(sorted[start..<min(start + 8, sorted.count)])
            var values = [UInt8](repeating: 0, count: 32 * 8)
            var size = 0
            let rc = CTSS2_pcr_read(esys, mask(group), &values, values.count, &size)
            guard rc == TSS2_RC_SUCCESS else { throw .vault(step: "PCR_Read", reason: "PCRs \(group) (SHA-256 bank)", code: rc) }
            guard size == 32 * group.count else {
                throw .vault(step: "PCR_Read", reason: "the TPM returned \(size / 32) SHA-256 values for PCRs \(group)", code: nil)
            }
            for (i, index) in group.enumerated() { byIndex[index] = Array(values[(32 * i)..<(32 * i + 32)]) }
        }
        return byIndex
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
        guard rc == TSS2_RC_SUCCESS else { throw .vault(step: "sealing", reason: "marshalling the sealed object's \(what) part", code: rc) }
        return Array(buffer.prefix(offset))
    }
}

/// The parts of a TSS2_RC from the TPM layer that choose an operator's message
/// (TPM 2.0 Part 2, 6.6: format 0 and format 1 response codes).
struct ResponseCode {
    static let value: UInt32 = 0x04            // TPM_RC_VALUE
    static let handle: UInt32 = 0x0B           // TPM_RC_HANDLE
    static let policyFail: UInt32 = 0x1D       // TPM_RC_POLICY_FAIL
    static let signature: UInt32 = 0x1B        // TPM_RC_SIGNATURE
    static let ticket: UInt32 = 0x20           // TPM_RC_TICKET
    static let policy: UInt32 = 0x126          // TPM_RC_POLICY (format 0)
    static let nvUninitialized: UInt32 = 0x14A // TPM_RC_NV_UNINITIALIZED (format 0)

    let raw: UInt32
    init(_ raw: UInt32) { self.raw = raw }

    private var fromTPM: Bool { raw & 0xFFFF_0000 == 0 }
    /// The error number of a format-1 code (bit 7 set), without handle/session/parameter bits.
    var format1: UInt32? { fromTPM && raw & 0x80 != 0 ? raw & 0x3F : nil }
    /// A format-0 code (bit 7 clear), whole.
    var format0: UInt32? { fromTPM && raw & 0x80 == 0 ? raw & 0xFFF : nil }
    /// The parameter a format-1 code names (bit 6 set), 1-based.
    var parameter: UInt32? { format1 != nil && raw & 0x40 != 0 ? (raw >> 8) & 0xF : nil }
}
