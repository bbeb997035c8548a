import Foundation
import OutpostAttestation
import OutpostTestSupport
import Testing
@testable import OutpostTrust

/// Quotes from swtpm, checked by the Swift verifier and by tpm2-tools'
/// `tpm2_checkquote` as the independent check. Each test runs its own swtpm.
@Suite("Trust: attestation key and quotes (swtpm)", .serialized)
struct AttestationTests {
    /// A swtpm whose firmware PCRs hold something, as a booted machine's do;
    /// a fresh swtpm has PCR 0 and 4 all zero, which the verifier refuses.
    static func bootedTPM(_ tmp: TemporaryDirectory) throws -> SoftwareTPM {
        let tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
        for pcr in [0, 4, 7] { try extend(tpm, pcr: pcr, with: "firmware \(pcr)") }
        return tpm
    }

    static func extend(_ tpm: SoftwareTPM, pcr: Int, with text: String) throws {
        let digest = SHA256Hex.of(text)
        let run = try runCommand(["tpm2_pcrextend", "-T", tpm.tcti, "\(pcr):sha256=\(digest)"], timeout: .seconds(20))
        guard run.status == 0 else { throw TestSupportError.failed(command: "tpm2_pcrextend", status: run.status, output: run.output) }
    }

    /// Writes what tpm2_checkquote reads: the TPMS_ATTEST, a TPMT_SIGNATURE
    /// (ECDSA, SHA-256, r and s as TPM2Bs), the AK's TPM2B_PUBLIC and the PCR
    /// values concatenated in selection order; runs it with `nonce`.
    static func checkquote(_ quote: TPMQuote, akPublic: [UInt8], nonce: [UInt8], dir: String) throws -> CommandResult {
        let signature: [UInt8] = [0x00, 0x18, 0x00, 0x0B, 0x00, 0x20] + quote.signatureR + [0x00, 0x20] + quote.signatureS
        try Data(quote.attest).write(to: URL(fileURLWithPath: dir + "/quote.msg"))
        try Data(signature).write(to: URL(fileURLWithPath: dir + "/quote.sig"))
        try Data(akPublic).write(to: URL(fileURLWithPath: dir + "/ak.pub"))
        try Data(quote.pcrs.keys.sorted().flatMap { quote.pcrs[$0] ?? [] }).write(to: URL(fileURLWithPath: dir + "/quote.pcrs"))
        let list = "sha256:" + quote.pcrs.keys.sorted().map(String.init).joined(separator: ",")
        return try runCommand(["tpm2_checkquote", "-u", dir + "/ak.pub", "-m", dir + "/quote.msg", "-s", dir + "/quote.sig",
                               "-f", dir + "/quote.pcrs", "-l", list, "-g", "sha256", "-q", attestationHex(nonce)],
                              timeout: .seconds(20))
    }

    static func evidence(_ quote: TPMQuote) -> QuoteEvidence {
        QuoteEvidence(attest: quote.attest, signatureR: quote.signatureR, signatureS: quote.signatureS, pcrs: quote.pcrs)
    }

    @Test func quoteVerifiesInSwiftAndWithTpm2Checkquote() throws {
        let tmp = try TemporaryDirectory("attest-quote")
        let tpm = try Self.bootedTPM(tmp)
        let attestor = try TPMAttestor(tcti: tpm.tcti)
        var random = SplitMix64.forTest()
        let nonce = random.bytes(32)
        let quote = try attestor.quote(nonce: nonce)
        #expect(quote.pcrs.keys.sorted() == [0, 4, 7, 8, 9])

        let verifier = try QuoteVerifier(attestationKeyPublic: attestor.attestationKeyPublic)
        let report = try verifier.verify(Self.evidence(quote), nonce: nonce, expected: quote.pcrs)
        #expect(report.passed, "\(report)")
        #expect(report.quote.extraData == nonce)
        #expect(report.quote.selections == [PCRSelection(hash: 0x000B, indexes: [0, 4, 7, 8, 9])])

        let check = try Self.checkquote(quote, akPublic: attestor.attestationKeyPublic, nonce: nonce, dir: tmp.path)
        #expect(check.status == 0, "\(check.output)")
        // The independent check can fail too: another nonce.
        let wrong = try Self.checkquote(quote, akPublic: attestor.attestationKeyPublic, nonce: random.bytes(32), dir: tmp.path)
        #expect(wrong.status != 0, "tpm2_checkquote accepted another nonce")
    }

    @Test func attestationKeyIsPersistentRestrictedAndNamedAsTheVerifierComputes() throws {
        let tmp = try TemporaryDirectory("attest-ak")
        let tpm = try Self.bootedTPM(tmp)
        let first = try TPMAttestor(tcti: tpm.tcti)
        let parsed = try AttestationKeyPublic(parsing: first.attestationKeyPublic)
        #expect(parsed.name == first.attestationKeyName)
        // A restart of the TPM and a new connection find the same key at 0x81000002.
        tpm.stop()
        try tpm.start()
        let second = try TPMAttestor(tcti: tpm.tcti)
        #expect(second.attestationKeyPublic == first.attestationKeyPublic)
        let read = try runCommand(["tpm2_readpublic", "-T", tpm.tcti, "-c", "0x81000002"], timeout: .seconds(20))
        #expect(read.status == 0 && read.stdout.contains("restricted") && read.stdout.contains("sign"), "\(read.output)")
        // The EK is the TCG template's ECC key: a restricted decryption key.
        let ek = try AttestationKeyPublicProbe.attributes(second.endorsementKeyPublic())
        #expect(ek & 0x0003_0000 == 0x0003_0000, "EK attributes 0x\(String(ek, radix: 16))")
    }

    @Test func wrongNonceTamperedByteAndZeroPCR0AreRefusedInOneLine() throws {
        let tmp = try TemporaryDirectory("attest-refuse")
        let fresh = try SoftwareTPM(stateDirectory: tmp.path + "/fresh")
        let attestor = try TPMAttestor(tcti: fresh.tcti)
        let verifier = try QuoteVerifier(attestationKeyPublic: attestor.attestationKeyPublic)
        var random = SplitMix64.forTest()
        let nonce = random.bytes(32)

        // A TPM whose firmware measured nothing: PCR 0 is all zero.
        let unmeasured = try attestor.quote(nonce: nonce)
        #expect(unmeasured.pcrs[0] == [UInt8](repeating: 0, count: 32))
        #expect(throws: AttestationError.zeroPCR(index: 0)) { try verifier.verify(Self.evidence(unmeasured), nonce: nonce) }

        for pcr in [0, 4, 7] { try Self.extend(fresh, pcr: pcr, with: "fw") }
        let quote = try attestor.quote(nonce: nonce)
        #expect(try verifier.verify(Self.evidence(quote), nonce: nonce).passed)

        let other = random.bytes(32)
        do {
            _ = try verifier.verify(Self.evidence(quote), nonce: other)
            Issue.record("another nonce was accepted")
        } catch {
            #expect(error == .nonceMismatch(expected: attestationHex(other), actual: attestationHex(nonce)))
            #expect(error.description.contains("extraData") && !error.description.contains("\n"), "\(error)")
        }

        // Every single-byte change of the signed structure breaks the signature
        // or its parse; none passes.
        for index in stride(from: 0, to: quote.attest.count, by: 7) {
            var tampered = Self.evidence(quote)
            tampered.attest[index] ^= 0x01
            #expect(throws: AttestationError.self) { try verifier.verify(tampered, nonce: nonce) }
        }
        var tampered = Self.evidence(quote)
        tampered.attest[tampered.attest.count - 1] ^= 0x80
        #expect(throws: AttestationError.badSignature) { try verifier.verify(tampered, nonce: nonce) }
    }

    @Test func changedPCRIsRefusedAndPCR8MismatchNamesExpectedAndActual() throws {
        let tmp = try TemporaryDirectory("attest-pcr8")
        let tpm = try Self.bootedTPM(tmp)
        let attestor = try TPMAttestor(tcti: tpm.tcti)
        let verifier = try QuoteVerifier(attestationKeyPublic: attestor.attestationKeyPublic)
        var random = SplitMix64.forTest()
        let nonce = random.bytes(32)
        let before = try attestor.quote(nonce: nonce)

        // A different kernel command line: GRUB extends PCR 8 with something else.
        try Self.extend(tpm, pcr: 8, with: "console=ttyS0 init=/bin/sh")
        let after = try attestor.quote(nonce: nonce)
        #expect(after.pcrs[8] != before.pcrs[8])
        #expect(after.pcrs[9] == before.pcrs[9])

        // Old values presented with the new quote: the digest gives it away.
        var replayed = Self.evidence(after)
        replayed.pcrs = before.pcrs
        do {
            _ = try verifier.verify(replayed, nonce: nonce)
            Issue.record("PCR values that the quote does not cover were accepted")
        } catch {
            guard case .pcrDigestMismatch = error else { Issue.record("\(error)"); return }
            #expect(error.description.contains("pcrDigest"), "\(error)")
        }
        let checked = try Self.checkquote(QuoteWithPCRs.replace(after, pcrs: before.pcrs), akPublic: attestor.attestationKeyPublic,
                                          nonce: nonce, dir: tmp.path)
        #expect(checked.status != 0, "tpm2_checkquote accepted PCR values the quote does not cover")

        // Against the expectation (the builder's PCR 8 for this slot), PCR 8 is named.
        let expected = [0: before.pcrs[0] ?? [], 8: before.pcrs[8] ?? [], 9: before.pcrs[9] ?? []]
        let report = try verifier.verify(Self.evidence(after), nonce: nonce, expected: expected)
        #expect(!report.passed)
        #expect(report.mismatches == [PCRMismatch(index: 8, expected: before.pcrs[8] ?? [], actual: after.pcrs[8])])
        let line = report.description
        #expect(line.contains("PCR 8: expected \(attestationHex(before.pcrs[8] ?? [])), actual \(attestationHex(after.pcrs[8] ?? []))"),
                "\(line)")
    }

    /// The controller's side is tpm2_makecredential without a TPM (`-T none`):
    /// a secret for the AK's name, encrypted to the EK. Only this TPM, holding
    /// both, gives it back; a name of another key does not come back.
    @Test func activateCredentialRecoversWhatMakeCredentialSealedToTheEK() throws {
        let tmp = try TemporaryDirectory("attest-cred")
        let tpm = try Self.bootedTPM(tmp)
        let attestor = try TPMAttestor(tcti: tpm.tcti)
        try Data(attestor.endorsementKeyPublic()).write(to: URL(fileURLWithPath: tmp.path + "/ek.pub"))
        var random = SplitMix64.forTest()
        let secret = random.bytes(32)
        try Data(secret).write(to: URL(fileURLWithPath: tmp.path + "/secret"))

        func makeCredential(name: [UInt8]) throws -> (blob: [UInt8], secret: [UInt8]) {
            let out = tmp.path + "/cred-\(attestationHex(name.prefix(4)))"
            let run = try runCommand(["tpm2_makecredential", "-T", "none", "-u", tmp.path + "/ek.pub", "-s", tmp.path + "/secret",
                                      "-n", attestationHex(name), "-o", out], timeout: .seconds(20))
            guard run.status == 0 else { throw TestSupportError.failed(command: "tpm2_makecredential", status: run.status, output: run.output) }
            // tpm2-tools' credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
            #expect(Array(bytes.prefix(4)) == [0xBA, 0xDC, 0xC0, 0xDE])
            let blobSize = Int(bytes[8]) << 8 | Int(bytes[9])
            return (Array(bytes[8..<(10 + blobSize)]), Array(bytes[(10 + blobSize)...]))
        }

        let good = try makeCredential(name: attestor.attestationKeyName)
        #expect(try attestor.activateCredential(credentialBlob: good.blob, encryptedSecret: good.secret) == secret)

        var otherName = attestor.attestationKeyName
        otherName[otherName.count - 1] ^= 0xFF
        let forged = try makeCredential(name: otherName)
        #expect(throws: TPMError.self) {
            try attestor.activateCredential(credentialBlob: forged.blob, encryptedSecret: forged.secret)
        }
    }

    /// The controller's own MakeCredential (Swift, no TPM) against the TPM's ActivateCredential.
    @Test func swiftMakeCredentialIsActivatedByTheTPMOnlyForTheAKsName() throws {
        let tmp = try TemporaryDirectory("attest-swiftcred")
        let tpm = try Self.bootedTPM(tmp)
        let attestor = try TPMAttestor(tcti: tpm.tcti)
        let ekPublic = try attestor.endorsementKeyPublic()
        var random = SplitMix64.forTest()
        for size in [1, 16, 32] {
            let secret = random.bytes(size)
            let challenge = try CredentialChallenge.make(endorsementKeyPublic: ekPublic, name: attestor.attestationKeyName,
                                                         credential: secret)
            #expect(try attestor.activateCredential(credentialBlob: challenge.credentialBlob,
                                                    encryptedSecret: challenge.encryptedSecret) == secret)
        }
        var otherName = attestor.attestationKeyName
        otherName[5] ^= 0x01
        let forged = try CredentialChallenge.make(endorsementKeyPublic: ekPublic, name: otherName, credential: random.bytes(32))
        #expect(throws: TPMError.self) {
            try attestor.activateCredential(credentialBlob: forged.credentialBlob, encryptedSecret: forged.encryptedSecret)
        }
        // Another TPM's EK: the challenge cannot be opened here.
        let other = try SoftwareTPM(stateDirectory: tmp.path + "/other")
        let otherEK = try TPMAttestor(tcti: other.tcti).endorsementKeyPublic()
        #expect(otherEK != ekPublic)
        let elsewhere = try CredentialChallenge.make(endorsementKeyPublic: otherEK, name: attestor.attestationKeyName,
                                                     credential: random.bytes(32))
        #expect(throws: TPMError.self) {
            try attestor.activateCredential(credentialBlob: elsewhere.credentialBlob, encryptedSecret: elsewhere.encryptedSecret)
        }
        // The AK itself is not an EK: MakeCredential refuses it.
        #expect(throws: AttestationError.self) {
            try CredentialChallenge.make(endorsementKeyPublic: attestor.attestationKeyPublic, name: attestor.attestationKeyName,
                                         credential: [1])
        }
    }
}

enum SHA256Hex {
    static func of(_ text: String) -> String {
        let run = try? runCommand(["sh", "-c", "printf %s \"$0\" | sha256sum", text], timeout: .seconds(10))
        return String(run?.stdout.prefix(64) ?? "")
    }
}

enum QuoteWithPCRs {
    static func replace(_ quote: TPMQuote, pcrs: [Int: [UInt8]]) -> TPMQuote {
        TPMQuote(attest: quote.attest, signatureR: quote.signatureR, signatureS: quote.signatureS, pcrs: pcrs)
    }
}

enum AttestationKeyPublicProbe {
    /// objectAttributes of a marshalled TPM2B_PUBLIC (size, type, nameAlg, then the attributes).
    static func attributes(_ bytes: [UInt8]) -> UInt32 {
        guard bytes.count >= 10 else { return 0 }
        return bytes[6..<10].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    }
}
