import Crypto
import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing

/// The vault's policy end to end on swtpm: a secret sealed to the sealing policy
/// the calculator computed, unsealed in a real policy session with an approved
/// policy the release key signed in Swift. Everything the TPM is given comes
/// from the calculator; the TPM decides.
@Suite("Vault unseal with a signed policy (swtpm)", .serialized)
struct VaultUnsealTests {
    static let floorHandle = "0x1800030"

    /// A TPM booted into "slot A", a counter as the security-version floor, and a
    /// secret sealed (no userWithAuth: the policy is the only way in).
    final class Vault {
        let tools: TPMTools
        let release = SigningKey.generate()
        let floorIndex: TPMNVIndexPublic
        let secret: [UInt8]

        init() throws {
            tools = try TPMTools("vault-unseal")
            floorIndex = try TPMNVIndexPublic(index: 0x0180_0030, attributes: [.counter, .ownerWrite, .authWrite, .ownerRead, .authRead, .noDA, .written],
                                              dataSize: 8)
            var random = SplitMix64.forTest()
            secret = random.bytes(32)
            for (pcr, text) in [(0, "firmware"), (7, "secure boot"), (8, "grub commands A"), (9, "kernel A")] { try extend(pcr, text) }
            try tools.must("tpm2_nvdefine", Self.floorHandle, "-C", "o", "-s", "8", "-a", "nt=counter|ownerwrite|authwrite|ownerread|authread|no_da")
            try tools.must("tpm2_nvincrement", Self.floorHandle, "-C", "o")

            let pcrs = try self.pcrs()
            let sealing = try VaultPolicy.sealing(releaseKey: TPMVerificationKey(release.key.publicKey), pcr0: pcrs[0] ?? [], pcr7: pcrs[7] ?? [])
            let dir = tools.dir
            try tools.must("tpm2_createprimary", "-C", "o", "-c", dir + "/primary.ctx")
            try tools.must("tpm2_create", "-C", dir + "/primary.ctx", "-L", try tools.write(sealing.bytes, "sealing.policy"),
                           "-a", "fixedtpm|fixedparent", "-i", try tools.write(secret, "secret"),
                           "-u", dir + "/sealed.pub", "-r", dir + "/sealed.priv")
            try tools.must("tpm2_load", "-C", dir + "/primary.ctx", "-u", dir + "/sealed.pub", "-r", dir + "/sealed.priv", "-c", dir + "/sealed.ctx")
        }

        static var floorHandle: String { VaultUnsealTests.floorHandle }

        func extend(_ pcr: Int, _ text: String) throws {
            try tools.must("tpm2_pcrextend", "\(pcr):sha256=" + hex(Array(SHA256.hash(data: Array(text.utf8)))))
        }

        /// PCR 0, 7, 8, 9 as the TPM holds them now.
        func pcrs() throws -> [Int: [UInt8]] {
            try tools.must("tpm2_pcrread", "sha256:0,7,8,9", "-o", tools.dir + "/pcrs")
            let all = try tools.read("pcrs")
            guard all.count == 128 else { throw TestSupportError.failed(command: "tpm2_pcrread", status: 0, output: "\(all.count) bytes") }
            return [0: Array(all[0..<32]), 7: Array(all[32..<64]), 8: Array(all[64..<96]), 9: Array(all[96..<128])]
        }

        func floor() throws -> UInt64 {
            try tools.must("tpm2_nvread", Self.floorHandle, "-C", "o", "-o", tools.dir + "/floor")
            return try tools.read("floor").reduce(0) { $0 << 8 | UInt64($1) }
        }

        /// What the builder does for the running slot: the approved policy for `securityVersion`.
        func approved(securityVersion: UInt64) throws -> ApprovedPolicy {
            let pcrs = try self.pcrs()
            let slot = BundleManifest.SlotPCRs(pcr8: hex(pcrs[8] ?? []), pcr9: hex(pcrs[9] ?? []))
            return try ApprovedPolicy(policy: VaultPolicy.approved(slot: slot, securityVersion: securityVersion, floorIndex: floorIndex))
        }

        /// What the device does: VerifySignature for a ticket, then one policy
        /// session (PolicyNV, PolicyPCR 8/9, PolicyAuthorize, PolicyPCR 0/7) and Unseal.
        func unseal(_ approved: ApprovedPolicy, securityVersion: UInt64, signature: ApprovedPolicySignature,
                    signer: P256.Signing.PublicKey) throws -> UnsealOutcome {
            let dir = tools.dir
            let name = try tools.loadExternalName(signer, attributes: "sign|userwithauth", tag: "signer")
            #expect(name == TPMVerificationKey(signer).name)
            try tools.must("tpm2_loadexternal", "-C", "o", "-G", "ecc", "-a", "sign|userwithauth", "-u", dir + "/signer.pem", "-c", dir + "/signer.ctx")
            let verified = try tools.run(["tpm2_verifysignature", "-c", dir + "/signer.ctx", "-d", try tools.write(approved.aHash, "ahash"),
                                          "-s", try tools.write(signature.tpmSignature, "signature"), "-t", dir + "/ticket"])
            guard verified.status == 0 else { return UnsealOutcome(failedStep: "tpm2_verifysignature", output: verified.output) }

            var operand: [UInt8] = []
            for shift in stride(from: 56, through: 0, by: -8) { operand.append(UInt8(truncatingIfNeeded: securityVersion >> UInt64(shift))) }
            let session = dir + "/policy.ctx"
            try tools.must("tpm2_startauthsession", "--policy-session", "-S", session)
            defer { _ = try? tools.run(["tpm2_flushcontext", session]) }
            let steps: [[String]] = [
                ["tpm2_policynv", "-S", session, "-C", "o", "-i", try tools.write(operand, "operand"), Self.floorHandle, "ule"],
                ["tpm2_policypcr", "-S", session, "-l", "sha256:8,9"],
                ["tpm2_policyauthorize", "-S", session, "-i", try tools.write(approved.policy.bytes, "approved.policy"),
                 "-q", try tools.write(approved.policyRef, "ref"), "-n", dir + "/signer.name", "-t", dir + "/ticket"],
                ["tpm2_policypcr", "-S", session, "-l", "sha256:0,7"],
                ["tpm2_unseal", "-c", dir + "/sealed.ctx", "-p", "session:" + session, "-o", dir + "/unsealed"],
            ]
            for step in steps {
                let result = try tools.run(step)
                guard result.status == 0 else { return UnsealOutcome(failedStep: step[0], output: result.output) }
            }
            return UnsealOutcome(unsealed: try tools.read("unsealed"))
        }
    }

    /// How far the device's unseal got: the secret, or the first tool the TPM refused.
    struct UnsealOutcome {
        var failedStep: String?
        var output = ""
        var unsealed: [UInt8]?
    }

    @Test func releaseKeySignatureUnsealsAndAnotherKeysDoesNot() throws {
        let vault = try Vault()
        let floor = try vault.floor()
        let approved = try vault.approved(securityVersion: floor)
        let signature = try approved.sign(with: vault.release)
        #expect(approved.isSigned(by: vault.release.key.publicKey, signature))
        let good = try vault.unseal(approved, securityVersion: floor, signature: signature, signer: vault.release.key.publicKey)
        #expect(good.unsealed == vault.secret, "\(good)")

        // The same approved policy signed by another key: the TPM gives a ticket for that
        // key, PolicyAuthorize then names it, and the sealed object refuses.
        let other = SigningKey.generate()
        let forged = try vault.unseal(approved, securityVersion: floor, signature: try approved.sign(with: other), signer: other.key.publicKey)
        #expect(forged.unsealed == nil && forged.failedStep == "tpm2_unseal", "\(forged)")
        // The release key's signature presented as another key's: no ticket.
        let mismatched = try vault.unseal(approved, securityVersion: floor, signature: signature, signer: other.key.publicKey)
        #expect(mismatched.unsealed == nil && mismatched.failedStep == "tpm2_verifysignature", "\(mismatched)")
        // A password session (no policy) does not unseal.
        let password = try vault.tools.run(["tpm2_unseal", "-c", vault.tools.dir + "/sealed.ctx"])
        #expect(password.status != 0)
    }

    /// The builder's file, end to end: approvals signed by VaultApprovals (deterministic
    /// signatures), encoded, read back and checked as the device will, unseal on the TPM.
    @Test func approvalsFromAVaultFileUnseal() throws {
        let vault = try Vault()
        let floor = try vault.floor()
        let pcrs = try vault.pcrs()
        let file = try VaultApprovals.sign(pcrs: ["IMGA": .init(pcr8: hex(pcrs[8] ?? []), pcr9: hex(pcrs[9] ?? []))],
                                           securityVersion: floor, osVersion: "1.0.0", key: vault.release).encoded()
        let read = try VaultApprovals.decode(file, source: "vault.json")
        try read.check(trust: TrustStore(anchors: [vault.release.key.publicKey]))
        let (approved, signature) = try read.approval(forSlot: "IMGA")
        #expect(approved == (try vault.approved(securityVersion: floor)))
        let outcome = try vault.unseal(approved, securityVersion: floor, signature: signature, signer: try read.releaseKey())
        #expect(outcome.unsealed == vault.secret, "\(outcome)")
    }

    @Test func anUpdatedSlotUnsealsWithItsNewSignedPolicyWithoutResealing() throws {
        let vault = try Vault()
        let floor = try vault.floor()
        let slotA = try vault.approved(securityVersion: floor)
        let signatureA = try slotA.sign(with: vault.release)

        // Boot "slot B": GRUB measures another kernel into PCR 9.
        try vault.extend(9, "kernel B")
        let stale = try vault.unseal(slotA, securityVersion: floor, signature: signatureA, signer: vault.release.key.publicKey)
        #expect(stale.unsealed == nil && stale.failedStep == "tpm2_policyauthorize", "slot A's policy with slot B's PCR 9: \(stale)")
        let slotB = try vault.approved(securityVersion: floor)
        #expect(slotB != slotA)
        let fresh = try vault.unseal(slotB, securityVersion: floor, signature: try slotB.sign(with: vault.release), signer: vault.release.key.publicKey)
        #expect(fresh.unsealed == vault.secret, "\(fresh)")
    }

    @Test func raisingTheFloorStopsOlderSecurityVersionsPoliciesEvenAcrossARedefinition() throws {
        let vault = try Vault()
        let floor = try vault.floor()
        let old = try vault.approved(securityVersion: floor)
        let oldSignature = try old.sign(with: vault.release)
        #expect(try vault.unseal(old, securityVersion: floor, signature: oldSignature, signer: vault.release.key.publicKey).unsealed == vault.secret)

        // The commit of a bundle with a higher security version raises the floor.
        try vault.tools.must("tpm2_nvincrement", VaultUnsealTests.floorHandle, "-C", "o")
        #expect(try vault.floor() == floor + 1)
        let refused = try vault.unseal(old, securityVersion: floor, signature: oldSignature, signer: vault.release.key.publicKey)
        #expect(refused.unsealed == nil && refused.failedStep == "tpm2_policynv", "\(refused)")
        let newer = try vault.approved(securityVersion: floor + 1)
        let unsealed = try vault.unseal(newer, securityVersion: floor + 1, signature: try newer.sign(with: vault.release),
                                        signer: vault.release.key.publicKey)
        #expect(unsealed.unsealed == vault.secret, "\(unsealed)")

        // An owner who deletes and redefines the floor gets an index of the same name
        // (PolicyNV cannot tell), but a counter never comes back lower than any counter
        // of this TPM was: the old policy stays refused.
        try vault.tools.must("tpm2_nvundefine", VaultUnsealTests.floorHandle, "-C", "o")
        try vault.tools.must("tpm2_nvdefine", VaultUnsealTests.floorHandle, "-C", "o", "-s", "8", "-a",
                             "nt=counter|ownerwrite|authwrite|ownerread|authread|no_da")
        try vault.tools.must("tpm2_nvincrement", VaultUnsealTests.floorHandle, "-C", "o")
        #expect(try vault.tools.nvName(0x0180_0030) == hex(vault.floorIndex.name))
        #expect(try vault.floor() > floor + 1)
        let redefined = try vault.unseal(old, securityVersion: floor, signature: oldSignature, signer: vault.release.key.publicKey)
        #expect(redefined.unsealed == nil && redefined.failedStep == "tpm2_policynv", "\(redefined)")
    }
}
