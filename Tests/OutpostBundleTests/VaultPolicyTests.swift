import Crypto
import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing

/// The vault's policy digests against bytes a real TPM produced (swtpm with
/// tpm2-tools trial sessions, recorded here), so the calculator is checked
/// without a TPM; VaultPolicyTPMTests repeats the comparison live.
@Suite struct VaultPolicyTests {
    /// The P-256 public key (uncompressed point) whose TPM name swtpm reported.
    static let releaseKeyPoint = "04abb40c10b4c4475bd43f16ee42721720ad4ac7814d213d51b82f9cd09492c9c2"
        + "98f75dfc5a00a8d9520084750c723b656feac7af30c005a4dd0237107754ec59"

    /// `tpm2_nvdefine 0x01800010 -s 8 -a "nt=counter|ownerwrite|ownerread|authread|authwrite|no_da"`.
    static func floorIndex(written: Bool = true) throws -> TPMNVIndexPublic {
        var attributes: TPMNVAttributes = [.counter, .ownerWrite, .ownerRead, .authRead, .authWrite, .noDA]
        if written { attributes.insert(.written) }
        return try TPMNVIndexPublic(index: 0x0180_0010, attributes: attributes, dataSize: 8)
    }

    static func bytes(_ s: String) -> [UInt8] { OutpostBundle.bytes(fromHex: s) ?? [] }
    static func repeated(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: 32) }

    @Test func namesMatchWhatSwtpmReported() throws {
        let key = try P256.Signing.PublicKey(x963Representation: Self.bytes(Self.releaseKeyPoint))
        // tpm2_loadexternal -a "sign|userwithauth" -u pub.pem -n …
        #expect(hex(TPMVerificationKey(key).name) == "000ba112ff5afaf23c2bbe1f669acf85d208d7d779fcf69938d1a1af269c0aebc841")
        // tpm2_loadexternal's default attributes (userwithauth|decrypt|sign) give another name.
        #expect(hex(TPMVerificationKey(key, attributes: 0x0006_0040).name)
                == "000b0b9d405183bcf9d03089baec5d76e78865c646c368136706456c392ab7d93280")
        #expect(TPMVerificationKey(key).sizedPublic.count == 0x56 + 2)
        // tpm2_nvreadpublic before and after the first tpm2_nvincrement.
        #expect(hex(try Self.floorIndex(written: false).name) == "000bc703cf0e2bdcb69a64cc82d5ac7efaa7d50b35f446164c1dbb631ad7e4091966")
        #expect(hex(try Self.floorIndex().name) == "000be7ec4e0926844ffe8d8b674b39af3604062b27e9f099bf944d8db88c9b5825f7")
    }

    @Test func policyNVAndTheVaultPoliciesMatchSwtpmTrialSessions() throws {
        let five: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 5]
        // tpm2_policynv -i five 0x01800010 ule / uge
        #expect(try TPMPolicyDigest().policyNV(index: Self.floorIndex(), operandB: five, operation: .unsignedLessOrEqual).description
                == "b62adee798bda54d1033243197c66fb96e24bc2fac5c92158fcc227f6fd19c5d")
        #expect(try TPMPolicyDigest().policyNV(index: Self.floorIndex(), operandB: five, operation: .unsignedGreaterOrEqual).description
                == "7dc84f61c391e45d7ca2d7cb6aefc3d51f90f5c0520688d0525fe65bee2eebda")
        // One trial session: tpm2_policynv … ule, then tpm2_policypcr -l sha256:8,9 with 11…11 and 22…22.
        let slot = BundleManifest.SlotPCRs(pcr8: String(repeating: "11", count: 32), pcr9: String(repeating: "22", count: 32))
        let approved = try VaultPolicy.approved(slot: slot, securityVersion: 5, floorIndex: Self.floorIndex())
        #expect(approved.description == "a5fd0aa60392f7ad50bd8d6834eb18227ee167177b239148fe799adfe4dff7b6")
        // One trial session: tpm2_policyauthorize -n key.name -q "outpost-vault-v1", then
        // tpm2_policypcr -l sha256:0,7 with 33…33 and 44…44.
        let key = TPMVerificationKey(try P256.Signing.PublicKey(x963Representation: Self.bytes(Self.releaseKeyPoint)))
        let sealing = try VaultPolicy.sealing(releaseKey: key, pcr0: Self.repeated(0x33), pcr7: Self.repeated(0x44))
        #expect(sealing.description == "6a79c1e8e8d236b34d0cf03acf52513925f7f294af98c481065fbeb25fd2d7c5")
        // The written index's name is what binds: the unwritten one gives another digest.
        #expect(try VaultPolicy.approved(slot: slot, securityVersion: 5, floorIndex: Self.floorIndex(written: false)) != approved)
        #expect(try VaultPolicy.approved(slot: slot, securityVersion: 6, floorIndex: Self.floorIndex()) != approved)
    }

    @Test func everyInputBitMovesTheDigest() throws {
        var random = SplitMix64.forTest()
        let values = [8: random.bytes(32), 9: random.bytes(32)]
        let base = try TPMPolicyDigest().policyPCR(values)
        var seen: Set<TPMPolicyDigest> = [base]
        for pcr in [8, 9] {
            for bit in stride(from: 0, to: 256, by: 17) {
                var changed = values
                changed[pcr]?[bit / 8] ^= 1 << (bit % 8)
                seen.insert(try TPMPolicyDigest().policyPCR(changed))
            }
        }
        #expect(seen.count == 1 + 2 * 16)
        // Selection is part of the digest: the same values under other PCR numbers differ.
        #expect(try TPMPolicyDigest().policyPCR([7: values[8] ?? [], 9: values[9] ?? []]) != base)
        // The order of updates matters.
        let name = try Self.floorIndex().name
        let nvThenPCR = try TPMPolicyDigest().policyNV(indexName: name, operandB: [1], operation: .equal).policyPCR(values)
        let pcrThenNV = try TPMPolicyDigest().policyPCR(values).policyNV(indexName: name, operandB: [1], operation: .equal)
        #expect(nvThenPCR != pcrThenNV)
        // PolicyAuthorize forgets what came before; PolicyOR does too.
        let keyName = TPMVerificationKey(P256.Signing.PrivateKey().publicKey).name
        #expect(try base.policyAuthorize(keySignName: keyName) == TPMPolicyDigest().policyAuthorize(keySignName: keyName))
        #expect(try base.policyAuthorize(keySignName: keyName, policyRef: [1]) != base.policyAuthorize(keySignName: keyName))
    }

    @Test func argumentsTheTPMRefusesAreRefusedInOneLine() throws {
        let pcr = Self.repeated(1)
        #expect(throws: TPMPolicyError.invalidArgument(command: "PolicyPCR", field: "PCR 24", reason: "not a PCR of a 24-PCR bank")) {
            try TPMPolicyDigest().policyPCR([24: pcr])
        }
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest().policyPCR([8: Array(pcr.prefix(20))]) }
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest().policyPCR([:]) }
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest.policyOR([TPMPolicyDigest()]) }
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest.policyOR([TPMPolicyDigest]( repeating: TPMPolicyDigest(), count: 9)) }
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest().policyAuthorize(keySignName: [0x00, 0x0B] + pcr, policyRef: [UInt8](repeating: 0, count: 65)) }
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest().policyAuthorize(keySignName: pcr) }
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest(bytes: [1, 2, 3]) }
        // Nine bytes compared at offset 0 of an 8-byte counter; eight at offset 1.
        let floor = try Self.floorIndex()
        #expect(throws: TPMPolicyError.self) { try TPMPolicyDigest().policyNV(index: floor, operandB: [UInt8](repeating: 0, count: 9), operation: .equal) }
        do {
            _ = try TPMPolicyDigest().policyNV(index: floor, operandB: [UInt8](repeating: 0, count: 8), offset: 1, operation: .equal)
            Issue.record("a comparison past the end of the index was accepted")
        } catch {
            #expect(error.description == "PolicyNV: operandB: 8 bytes at offset 1 pass the end of a 8-byte index")
        }
        #expect(throws: TPMPolicyError.self) { try TPMNVIndexPublic(index: 0x8100_0001, attributes: [.ownerWrite], dataSize: 8) }
        #expect(throws: TPMPolicyError.self) { try TPMNVIndexPublic(index: 0x0180_0010, attributes: [.counter], dataSize: 4) }
        let slot = BundleManifest.SlotPCRs(pcr8: "zz", pcr9: String(repeating: "22", count: 32))
        #expect(throws: TPMPolicyError.self) { try VaultPolicy.approved(slot: slot, securityVersion: 1, floorIndex: floor) }
    }

    @Test func approvedPolicySignatureVerifiesOnlyForItsKeyPolicyAndReference() throws {
        let release = SigningKey.generate()
        let other = SigningKey.generate()
        let policy = try TPMPolicyDigest().policyPCR([8: Self.repeated(8), 9: Self.repeated(9)])
        let approved = try ApprovedPolicy(policy: policy)
        #expect(approved.aHash == Array(SHA256.hash(data: policy.bytes + Array("outpost-vault-v1".utf8))))
        let signature = try approved.sign(with: release)
        #expect(approved.isSigned(by: release.key.publicKey, signature))
        #expect(!approved.isSigned(by: other.key.publicKey, signature))
        #expect(!approved.isSigned(by: release.key.publicKey, try approved.sign(with: other)))
        #expect(!(try ApprovedPolicy(policy: policy, policyRef: Array("other".utf8))).isSigned(by: release.key.publicKey, signature))
        let otherPolicy = try ApprovedPolicy(policy: try TPMPolicyDigest().policyPCR([8: Self.repeated(8), 9: Self.repeated(10)]))
        #expect(!otherPolicy.isSigned(by: release.key.publicKey, signature))
        // TPMT_SIGNATURE for TPM2_VerifySignature.
        #expect(Array(signature.tpmSignature.prefix(6)) == [0x00, 0x18, 0x00, 0x0B, 0x00, 0x20])
        #expect(signature.tpmSignature.count == 6 + 32 + 2 + 32)
        #expect(throws: TPMPolicyError.self) { try ApprovedPolicySignature(raw: [1, 2]) }
    }

    /// openssl, independently: the DER signature verifies over policy ‖ policyRef with the release key's PEM.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func opensslVerifiesTheApprovedPolicySignature() throws {
        let tmp = try TemporaryDirectory("vault-openssl")
        let release = SigningKey.generate()
        let approved = try ApprovedPolicy(policy: try TPMPolicyDigest().policyPCR([9: Self.repeated(9)]))
        let signature = try approved.sign(with: release)
        try Data(approved.signedBytes).write(to: URL(fileURLWithPath: tmp.path + "/signed"))
        try Data(try signature.der).write(to: URL(fileURLWithPath: tmp.path + "/sig.der"))
        try release.publicPEM.write(toFile: tmp.path + "/pub.pem", atomically: true, encoding: .utf8)
        let verify = ["/usr/bin/openssl", "dgst", "-sha256", "-verify", tmp.path + "/pub.pem", "-signature", tmp.path + "/sig.der", tmp.path + "/signed"]
        let good = try runCommand(verify)
        #expect(good.status == 0 && good.output.contains("Verified OK"), "\(good.output)")
        var tampered = approved.signedBytes
        tampered[5] ^= 1
        try Data(tampered).write(to: URL(fileURLWithPath: tmp.path + "/signed"))
        #expect(try runCommand(verify).status != 0)
    }
}
