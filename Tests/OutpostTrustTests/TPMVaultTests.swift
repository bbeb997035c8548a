import CTSS2
import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing
@testable import OutpostTrust

/// The vault through ESYS on swtpm: the same command sequence that
/// VaultUnsealTests drives with tpm2-tools, here as the device runs it.
/// Every digest comes from OutpostBundle's calculator; the TPM decides.
/// Each test runs its own swtpm.
@Suite("Trust: the vault's floor, seal and signed-policy unseal (swtpm)", .serialized)
struct TPMVaultTests {
    /// A TPM booted into "slot A" with the floor defined and a secret sealed
    /// to the release key and the firmware PCRs read from the TPM.
    final class Device {
        let tmp: TemporaryDirectory
        let tpm: SoftwareTPM
        let vault: TPMVault
        let release: SigningKey
        let secret: [UInt8]
        var random: SplitMix64
        let floor: UInt64
        let blob: SealedBlob

        init(_ name: String) throws {
            tmp = try TemporaryDirectory(name)
            tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
            let vault = try TPMVault(tcti: tpm.tcti)
            self.vault = vault
            let release = SigningKey.generate()
            self.release = release
            var random = SplitMix64.forTest(name)
            secret = random.bytes(32)
            for pcr in [0, 7, 8, 9] { try Self.extend(vault, pcr, random.bytes(32)) }
            self.random = random
            floor = try vault.defineFloor()
            let pcrs = try vault.readPCRs([0, 7])
            let sealing = try VaultPolicy.sealing(releaseKey: TPMVerificationKey(release.key.publicKey),
                                                  pcr0: pcrs[0] ?? [], pcr7: pcrs[7] ?? [])
            blob = try vault.seal(secret: secret, authPolicy: sealing)
        }

        var releaseKey: TPMVerificationKey { TPMVerificationKey(release.key.publicKey) }

        /// PCR_Extend with a fresh random digest, as a boot stage measuring something.
        func extend(_ pcr: Int) throws { try Self.extend(vault, pcr, random.bytes(32)) }

        static func extend(_ vault: TPMVault, _ pcr: Int, _ digest: [UInt8]) throws {
            let rc = try vault.connection.withContext { esys throws(TPMError) in CTSS2_pcr_extend_sha256(esys, UInt32(pcr), digest) }
            guard rc == TSS2_RC_SUCCESS else { throw TPMError.command(step: "PCR_Extend \(pcr)", code: rc) }
        }

        /// What the builder signs for the running slot: the approved policy of
        /// the PCR 8/9 values the TPM holds now, for `securityVersion`.
        func approved(securityVersion: UInt64) throws -> ApprovedPolicy {
            let pcrs = try vault.readPCRs([8, 9])
            let slot = BundleManifest.SlotPCRs(pcr8: hex(pcrs[8] ?? []), pcr9: hex(pcrs[9] ?? []))
            return try ApprovedPolicy(policy: VaultPolicy.approved(slot: slot, securityVersion: securityVersion,
                                                                   floorIndex: VaultPolicy.floorIndex))
        }

        /// The device's unseal with a policy for `securityVersion` signed by `signer`,
        /// presenting `key` (default: the release key) as the release key.
        func unseal(securityVersion: UInt64, signer: SigningKey? = nil, key: TPMVerificationKey? = nil,
                    approved given: ApprovedPolicy? = nil, blob given2: SealedBlob? = nil) throws -> Result<[UInt8], TPMError> {
            let approved = try given ?? self.approved(securityVersion: securityVersion)
            let signature = try approved.sign(with: signer ?? release)
            do throws(TPMError) {
                return .success(try vault.unseal(given2 ?? blob, approved: approved, signature: signature, releaseKey: key ?? releaseKey,
                                                 securityVersion: securityVersion))
            } catch {
                return .failure(error)
            }
        }
    }

    static func message(_ result: Result<[UInt8], TPMError>) -> String {
        switch result {
        case .success(let bytes): return "unsealed \(bytes.count) bytes"
        case .failure(let error): return error.description
        }
    }

    @Test func floorIsDefinedWithTheBuildersNameAndOnlyEverRaised() throws {
        let tmp = try TemporaryDirectory("vault-floor")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        let vault = try TPMVault(tcti: tpm.tcti)
        #expect(try vault.readFloor() == nil)
        #expect(throws: TPMError.self) { try vault.raiseFloor(to: 1) }

        // Another index at the floor's handle (a counter without noDA): refused, not replaced.
        try vault.connection.withContext { esys throws(TPMError) in
            var nv = ESYS_TR(ESYS_TR_NONE)
            let rc = CTSS2_nv_define(esys, VaultPolicy.floorHandle, 0x0006_0016, 8, &nv)
            #expect(rc == TSS2_RC_SUCCESS, "\(TPMError.decode(rc))")
            _ = Esys_TR_Close(esys, &nv)
        }
        let foreign = #expect(throws: TPMError.self) { try vault.defineFloor() }
        #expect(foreign?.description.contains("another shape") == true, "\(String(describing: foreign))")
        try vault.connection.withContext { esys throws(TPMError) in
            guard var nv = try TPMVault.openFloor(esys) else { Issue.record("the foreign index vanished"); return }
            let rc = Esys_NV_UndefineSpace(esys, ESYS_TR(ESYS_TR_RH_OWNER), nv, ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE),
                                           ESYS_TR(ESYS_TR_NONE))
            #expect(rc == TSS2_RC_SUCCESS, "\(TPMError.decode(rc))")
            if rc != TSS2_RC_SUCCESS { _ = Esys_TR_Close(esys, &nv) }
        }
        #expect(try vault.readFloor() == nil)

        let floor = try vault.defineFloor()
        #expect(try vault.readFloor() == floor)
        // The TPM's own name for the index is the one the builder computes without a TPM.
        let (attributes, name) = try vault.connection.withContext { esys throws(TPMError) in
            guard var nv = try TPMVault.openFloor(esys) else { throw TPMError.unusable(step: "test", reason: "no floor") }
            defer { _ = Esys_TR_Close(esys, &nv) }
            return try TPMVault.readPublic(esys, nv)
        }
        #expect(name == (try VaultPolicy.floorIndex.name))
        #expect(attributes == (try VaultPolicy.floorIndex.attributes.rawValue))

        // A second define returns the floor as it is, without writing.
        #expect(try vault.defineFloor() == floor)
        #expect(try vault.readFloor() == floor)

        // Raised step by step, never lowered, and a jump of over 1000 refused before any write.
        #expect(try vault.raiseFloor(to: floor + 3) == floor + 3)
        #expect(try vault.raiseFloor(to: floor) == floor + 3)
        #expect(try vault.raiseFloor(to: 0) == floor + 3)
        let jump = #expect(throws: TPMError.self) { try vault.raiseFloor(to: floor + 3 + 1001) }
        #expect(jump?.description.contains("more than 1000") == true, "\(String(describing: jump))")
        #expect(try vault.readFloor() == floor + 3)
        #expect(try vault.raiseFloor(to: floor + 3 + 1000) == floor + 1003)
    }

    @Test func releaseKeysApprovedPolicyUnsealsAndAnotherKeysDoesNot() throws {
        let device = try Device("vault-unseal")
        // The sealed object: policy only, bound to this TPM and parent.
        let attributes = device.blob.objectAttributes
        #expect(attributes & UInt32(TPMA_OBJECT_USERWITHAUTH) == 0)
        for bit in [TPMA_OBJECT_FIXEDTPM, TPMA_OBJECT_FIXEDPARENT, TPMA_OBJECT_ADMINWITHPOLICY] { #expect(attributes & UInt32(bit) != 0) }
        let pcrs = try device.vault.readPCRs([0, 7])
        #expect(device.blob.authPolicy == (try VaultPolicy.sealing(releaseKey: device.releaseKey, pcr0: pcrs[0] ?? [], pcr7: pcrs[7] ?? [])))

        let good = try device.unseal(securityVersion: device.floor)
        #expect(try good.get() == device.secret, "\(Self.message(good))")

        // The same approved policy signed by another key: VerifySignature with the release key refuses.
        let other = SigningKey.generate()
        let forged = try device.unseal(securityVersion: device.floor, signer: other)
        #expect(Self.message(forged).contains("vault: VerifySignature: the approved policy is not signed by the release key"),
                "\(Self.message(forged))")
        // Another key presented as the release key, with its own signature: the ticket names
        // that key, and the sealed object's policy (bound to the real release key) refuses.
        let impostor = try device.unseal(securityVersion: device.floor, signer: other, key: TPMVerificationKey(other.key.publicKey))
        #expect(Self.message(impostor).contains("vault: Unseal: policy check failed"), "\(Self.message(impostor))")
        #expect(Self.message(impostor).contains("another release key"), "\(Self.message(impostor))")

        // A password session, without the policy: refused.
        let password = try device.vault.connection.withContext { esys throws(TPMError) -> UInt32 in
            var item = ESYS_TR(ESYS_TR_NONE)
            let blob = device.blob
            let rc = CTSS2_load_blobs(esys, device.vault.storageRootKey, blob.publicBytes, blob.publicBytes.count,
                                      blob.privateBytes, blob.privateBytes.count, &item)
            guard rc == TSS2_RC_SUCCESS else { return rc }
            defer { _ = Esys_FlushContext(esys, item) }
            var out = [UInt8](repeating: 0, count: 256)
            var written = 0
            let rc2 = CTSS2_unseal(esys, item, ESYS_TR(ESYS_TR_PASSWORD), &out, out.count, &written)
            #expect(!out.prefix(written).elementsEqual(device.secret))
            return rc2
        }
        #expect(password != TSS2_RC_SUCCESS)
        #expect(ResponseCode(password).format0 == 0x12F, "TPM_RC_AUTH_UNAVAILABLE expected: \(TPMError.decode(password))")

        // Still unseals afterwards: the refusals flushed what they loaded (swtpm holds three objects).
        #expect(try device.unseal(securityVersion: device.floor).get() == device.secret)
    }

    @Test func raisedFloorRefusesTheOlderSecurityVersionAndTheNewerUnsealsTheSameBlob() throws {
        let device = try Device("vault-floor-raise")
        let old = try device.approved(securityVersion: device.floor)
        #expect(try device.unseal(securityVersion: device.floor, approved: old).get() == device.secret)

        #expect(try device.vault.raiseFloor(to: device.floor + 1) == device.floor + 1)
        let refused = try device.unseal(securityVersion: device.floor, approved: old)
        #expect(Self.message(refused).contains("vault: PolicyNV: the security floor \(device.floor + 1) is above this slot's security version \(device.floor) (rollback refused)"),
                "\(Self.message(refused))")
        // Claiming the new version with the old approved policy: PolicyNV holds, the digest is not the approved one.
        let claimed = try device.unseal(securityVersion: device.floor + 1, approved: old)
        #expect(Self.message(claimed).contains("vault: PolicyAuthorize:"), "\(Self.message(claimed))")

        let newer = try device.unseal(securityVersion: device.floor + 1)
        #expect(try newer.get() == device.secret, "\(Self.message(newer))")

        // The blob as stored on PERSIST unseals the same way after a round trip through its file.
        let path = device.tmp.path + "/vault.blob"
        try device.blob.save(to: path)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let loaded = try #require(try SealedBlob.load(from: path))
        #expect(loaded == device.blob)
        #expect(try device.unseal(securityVersion: device.floor + 1, blob: loaded).get() == device.secret)
    }

    @Test func movedSlotOrFirmwarePCRsRefuseTheOldPolicyWithTheirOwnMessages() throws {
        let device = try Device("vault-pcrs")
        let slotA = try device.approved(securityVersion: device.floor)
        #expect(try device.unseal(securityVersion: device.floor, approved: slotA).get() == device.secret)

        // "Slot B": PCR 9 moves. Slot A's approved policy no longer matches; B's newly signed one unseals.
        try device.extend(9)
        let stale = try device.unseal(securityVersion: device.floor, approved: slotA)
        #expect(Self.message(stale).contains("vault: PolicyAuthorize: PCR 8/9 do not match the approved policy of this slot"),
                "\(Self.message(stale))")
        let slotB = try device.unseal(securityVersion: device.floor)
        #expect(try slotB.get() == device.secret, "\(Self.message(slotB))")

        // The firmware's Secure Boot PCR moves after enrolment: the signed part holds, the sealed part does not.
        try device.extend(7)
        let firmware = try device.unseal(securityVersion: device.floor)
        #expect(Self.message(firmware).contains("vault: Unseal: policy check failed: PCR 0/7 changed since enrolment"),
                "\(Self.message(firmware))")
    }

    @Test func theSecretNeverCrossesTheBusInTheClear() throws {
        let tmp = try TemporaryDirectory("vault-bus")
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        // tss2's pcap TCTI records every command and response between ESYS and swtpm.
        let capture = tmp.path + "/bus.pcap"
        setenv("TCTI_PCAP_FILE", capture, 1)
        defer { unsetenv("TCTI_PCAP_FILE") }
        var random = SplitMix64.forTest()
        let secret = random.bytes(32)
        // In a function of its own, so the vault (and the capture file) is closed before it is read.
        func sealAndUnseal() throws -> [UInt8] {
            let vault = try TPMVault(tcti: "pcap:" + tpm.tcti)
            for pcr in [0, 7, 8, 9] { try Device.extend(vault, pcr, random.bytes(32)) }
            let floor = try vault.defineFloor()
            let release = SigningKey.generate()
            let key = TPMVerificationKey(release.key.publicKey)
            let pcrs = try vault.readPCRs([0, 7, 8, 9])
            let blob = try vault.seal(secret: secret, authPolicy: VaultPolicy.sealing(releaseKey: key, pcr0: pcrs[0] ?? [], pcr7: pcrs[7] ?? []))
            let slot = BundleManifest.SlotPCRs(pcr8: hex(pcrs[8] ?? []), pcr9: hex(pcrs[9] ?? []))
            let approved = try ApprovedPolicy(policy: VaultPolicy.approved(slot: slot, securityVersion: floor, floorIndex: VaultPolicy.floorIndex))
            return try vault.unseal(blob, approved: approved, signature: approved.sign(with: release), releaseKey: key, securityVersion: floor)
        }
        #expect(try sealAndUnseal() == secret)

        let bus = [UInt8](try Data(contentsOf: URL(fileURLWithPath: capture)))
        // The capture holds the session's commands (the policyRef goes in the clear) ...
        let recordedSession = Self.contains(bus, VaultPolicy.policyRef)
        let recordedUnseal = Self.contains(bus, [0x00, 0x00, 0x01, 0x5E])
        #expect(recordedSession && recordedUnseal, "the capture (\(bus.count) bytes) did not record the unseal session")
        // ... but neither Create's sensitive data nor Unseal's response shows the secret
        // (without TPMA_SESSION_ENCRYPT on the policy session, Unseal's response does).
        let leaked = Self.contains(bus, secret)
        #expect(!leaked, "the secret crossed the bus in the clear")
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    @Test func sealedBlobFileRefusesWhatItDidNotWrite() throws {
        let device = try Device("vault-blob")
        let encoded = device.blob.encoded
        #expect(try SealedBlob(encoded: encoded) == device.blob)
        #expect(try SealedBlob.load(from: device.tmp.path + "/absent") == nil)
        // Every truncation, a trailing byte, another magic: errors naming the blob.
        for cut in 0..<encoded.count {
            #expect(throws: TPMError.self) { try SealedBlob(encoded: Array(encoded.prefix(cut))) }
        }
        #expect(throws: TPMError.self) { try SealedBlob(encoded: encoded + [0]) }
        var magic = encoded
        magic[0] ^= 1
        #expect(throws: TPMError.self) { try SealedBlob(encoded: magic) }
        // Random bytes after the magic end in an error, never a crash.
        var random = SplitMix64.forTest()
        for _ in 0..<500 {
            let garbage = SealedBlob.magic + random.bytes(Int(random.next() % 400))
            _ = try? SealedBlob(encoded: garbage)
        }
        // A blob made by another TPM does not load here.
        let otherDir = try TemporaryDirectory("vault-blob-other")
        let otherTPM = try SoftwareTPM(stateDirectory: otherDir.path + "/tpm")
        let otherVault = try TPMVault(tcti: otherTPM.tcti)
        _ = try otherVault.defineFloor()
        let foreign = try otherVault.seal(secret: device.secret, authPolicy: device.blob.authPolicy)
        let refused = try device.unseal(securityVersion: device.floor, blob: foreign)
        #expect(Self.message(refused).contains("vault: Load: the sealed blob was made by another TPM"), "\(Self.message(refused))")

        #expect(throws: TPMError.self) { try device.vault.seal(secret: [], authPolicy: device.blob.authPolicy) }
        #expect(throws: TPMError.self) { try device.vault.seal(secret: [UInt8](repeating: 1, count: 129), authPolicy: device.blob.authPolicy) }
    }
}
