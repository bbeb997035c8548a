import Crypto
import OutpostAttestation
import OutpostBundle
import OutpostTestSupport
import Testing

/// Quotes built byte by byte and signed with a software P-256 key: the
/// verifier's parsing, its checks and its errors without a TPM. The quotes of
/// a real TPM are checked in OutpostTrustTests (swtpm).
@Suite("Attestation: the quote verifier on built quotes")
struct QuoteVerifierTests {
    /// A TPM2B_PUBLIC for `key` as a TPM marshals an AK: restricted|sign|fixedTPM|fixedParent|
    /// sensitiveDataOrigin|userWithAuth, ECDSA/SHA-256, P-256.
    static func akPublic(_ key: P256.Signing.PublicKey, attributes: UInt32 = 0x0005_0072, curve: UInt16 = 3) -> [UInt8] {
        let point = Array(key.x963Representation.dropFirst())
        var area: [UInt8] = be16(0x0023) + be16(0x000B) + be32(attributes) + be16(0)
        area += be16(0x0010) + be16(0x0018) + be16(0x000B) + be16(curve) + be16(0x0010)
        area += be16(32) + point.prefix(32) + be16(32) + point.suffix(32)
        return be16(UInt16(area.count)) + area
    }

    static func attest(nonce: [UInt8], selection: [UInt8] = [0x91, 0x03, 0x00], digest: [UInt8],
                       magic: UInt32 = 0xFF54_4347, type: UInt16 = 0x8018) -> [UInt8] {
        var out = be32(magic) + be16(type)
        out += be16(34) + [0x00, 0x0B] + [UInt8](repeating: 0xAB, count: 32)  // qualifiedSigner
        out += be16(UInt16(nonce.count)) + nonce
        out += be64(123_456) + be32(7) + be32(2) + [1]                          // clockInfo
        out += be64(0x2019_1023_0016_3100)                                       // firmwareVersion
        out += be32(1) + be16(0x000B) + [UInt8(selection.count)] + selection
        out += be16(UInt16(digest.count)) + digest
        return out
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func be32(_ v: UInt32) -> [UInt8] { be16(UInt16(v >> 16)) + be16(UInt16(v & 0xFFFF)) }
    static func be64(_ v: UInt64) -> [UInt8] { be32(UInt32(v >> 32)) + be32(UInt32(v & 0xFFFF_FFFF)) }

    /// PCRs 0, 4, 7, 8, 9 (selection bitmap 91 03 00) with distinct values.
    static func pcrs(_ random: inout SplitMix64) -> [Int: [UInt8]] {
        var out: [Int: [UInt8]] = [:]
        for index in [0, 4, 7, 8, 9] { out[index] = random.bytes(32) }
        return out
    }

    static func digest(_ pcrs: [Int: [UInt8]]) -> [UInt8] {
        Array(SHA256.hash(data: pcrs.keys.sorted().flatMap { pcrs[$0] ?? [] }))
    }

    /// A signed quote over `pcrs` and the verifier for its key.
    static func signed(nonce: [UInt8], pcrs: [Int: [UInt8]], attest: [UInt8]? = nil) throws -> (QuoteEvidence, QuoteVerifier) {
        let key = P256.Signing.PrivateKey()
        let body = attest ?? Self.attest(nonce: nonce, digest: digest(pcrs))
        let raw = Array(try key.signature(for: body).rawRepresentation)
        let evidence = QuoteEvidence(attest: body, signatureR: Array(raw.prefix(32)), signatureS: Array(raw.suffix(32)), pcrs: pcrs)
        return (evidence, try QuoteVerifier(attestationKeyPublic: akPublic(key.publicKey)))
    }

    @Test func parsesEveryFieldOfAQuote() throws {
        let nonce = Array("nonce-0123456789".utf8)
        let quote = try QuoteAttestation(parsing: Self.attest(nonce: nonce, digest: [UInt8](repeating: 0x5A, count: 32)))
        #expect(quote.extraData == nonce)
        #expect(quote.qualifiedSigner == [0x00, 0x0B] + [UInt8](repeating: 0xAB, count: 32))
        #expect(quote.clock == 123_456 && quote.resetCount == 7 && quote.restartCount == 2 && quote.safe)
        #expect(quote.firmwareVersion == 0x2019_1023_0016_3100)
        #expect(quote.selections == [PCRSelection(hash: 0x000B, indexes: [0, 4, 7, 8, 9])])
        #expect(quote.pcrDigest == [UInt8](repeating: 0x5A, count: 32))
    }

    @Test func aSignedQuoteWithTheRightNonceAndValuesPasses() throws {
        var random = SplitMix64.forTest()
        let nonce = random.bytes(32)
        let pcrs = Self.pcrs(&random)
        let (evidence, verifier) = try Self.signed(nonce: nonce, pcrs: pcrs)
        let report = try verifier.verify(evidence, nonce: nonce, expected: pcrs)
        #expect(report.passed && report.pcrs == pcrs, "\(report)")
        // Leading zero bytes of r or s may be left off, as some encoders do.
        var short = evidence
        short.signatureR = Array(evidence.signatureR.drop { $0 == 0 })
        #expect(try verifier.verify(short, nonce: nonce).passed)
    }

    @Test func eachRefusalNamesWhatFailed() throws {
        var random = SplitMix64.forTest()
        let nonce = random.bytes(32)
        let pcrs = Self.pcrs(&random)
        let (evidence, verifier) = try Self.signed(nonce: nonce, pcrs: pcrs)

        #expect(throws: AttestationError.nonceMismatch(expected: attestationHex([1, 2]), actual: attestationHex(nonce))) {
            try verifier.verify(evidence, nonce: [1, 2])
        }
        var flipped = evidence
        flipped.signatureS[5] ^= 1
        #expect(throws: AttestationError.badSignature) { try verifier.verify(flipped, nonce: nonce) }
        var other = evidence
        other.pcrs[9]?[0] ^= 1
        #expect(throws: AttestationError.pcrDigestMismatch(quoted: attestationHex(Self.digest(pcrs)),
                                                           computed: attestationHex(Self.digest(other.pcrs)))) {
            try verifier.verify(other, nonce: nonce)
        }
        var missing = evidence
        missing.pcrs[7] = nil
        #expect(throws: AttestationError.selectionMismatch(quoted: "sha256:[0, 4, 7, 8, 9]", reported: "sha256:[0, 4, 8, 9]")) {
            try verifier.verify(missing, nonce: nonce)
        }
        var zero4 = pcrs
        zero4[4] = [UInt8](repeating: 0, count: 32)
        let (zeroEvidence, zeroVerifier) = try Self.signed(nonce: nonce, pcrs: zero4)
        #expect(throws: AttestationError.zeroPCR(index: 4)) { try zeroVerifier.verify(zeroEvidence, nonce: nonce) }
        // PCR 7 may be zero (no Secure Boot policy measured): only 0 and 4 must hold something.
        var zero7 = pcrs
        zero7[7] = [UInt8](repeating: 0, count: 32)
        let (zero7Evidence, zero7Verifier) = try Self.signed(nonce: nonce, pcrs: zero7)
        #expect(try zero7Verifier.verify(zero7Evidence, nonce: nonce).passed)
        var shortValue = pcrs
        shortValue[8] = [1, 2, 3]
        let (shortEvidence, shortVerifier) = try Self.signed(nonce: nonce, pcrs: shortValue)
        #expect(throws: AttestationError.badPCRValue(index: 8, length: 3)) { try shortVerifier.verify(shortEvidence, nonce: nonce) }
    }

    @Test func expectationsFromTheManifestNameEveryDifferingPCR() throws {
        var random = SplitMix64.forTest()
        let nonce = random.bytes(32)
        let pcrs = Self.pcrs(&random)
        let (evidence, verifier) = try Self.signed(nonce: nonce, pcrs: pcrs)
        let pcr8 = random.bytes(32)
        let slot = BundleManifest.SlotPCRs(pcr8: attestationHex(pcr8).uppercased(), pcr9: attestationHex(pcrs[9] ?? []))
        let firstUse = [0: pcrs[0] ?? [], 4: random.bytes(32), 7: pcrs[7] ?? []]
        let expected = try QuoteVerifier.expectations(slot: slot, firstUse: firstUse)
        #expect(expected[8] == pcr8 && expected[9] == pcrs[9])
        let report = try verifier.verify(evidence, nonce: nonce, expected: expected)
        #expect(report.mismatches.map(\.index) == [4, 8])
        #expect(report.mismatches.last == PCRMismatch(index: 8, expected: pcr8, actual: pcrs[8]))
        #expect(report.description.contains("PCR 8: expected \(attestationHex(pcr8)), actual \(attestationHex(pcrs[8] ?? []))"))
        #expect(!report.description.contains("\n"))
        // An expectation for a PCR the quote does not cover is a mismatch too, never a pass.
        let uncovered = try verifier.verify(evidence, nonce: nonce, expected: [11: pcr8])
        #expect(uncovered.mismatches == [PCRMismatch(index: 11, expected: pcr8, actual: nil)])
        #expect(throws: AttestationError.self) {
            try QuoteVerifier.expectations(slot: .init(pcr8: "zz", pcr9: ""), firstUse: [:])
        }
    }

    @Test func malformedStructuresNameTheFieldAndOffset() throws {
        let digest = [UInt8](repeating: 1, count: 32)
        let cases: [([UInt8], String)] = [
            (Self.attest(nonce: [], digest: digest, magic: 0xFF54_4348), "TPMS_ATTEST.magic at offset 0"),
            (Self.attest(nonce: [], digest: digest, type: 0x8017), "TPMS_ATTEST.type at offset 4"),
            (Array(Self.attest(nonce: [], digest: digest).dropLast()), "TPMS_ATTEST.pcrDigest at offset"),
            (Self.attest(nonce: [], digest: digest) + [0], "TPMS_ATTEST.end at offset"),
            (Array(Self.attest(nonce: [], digest: digest).prefix(5)), "TPMS_ATTEST.type at offset 4"),
        ]
        for (bytes, prefix) in cases {
            do {
                _ = try QuoteAttestation(parsing: bytes)
                Issue.record("parsed: \(prefix)")
            } catch {
                #expect(error.description.hasPrefix("attestation: " + prefix), "\(error)")
            }
        }
        let key = P256.Signing.PrivateKey().publicKey
        #expect(throws: AttestationError.malformed(structure: "TPM2B_PUBLIC", field: "parameters.curveID", offset: 18,
                                                    reason: "0x4, not NIST P-256 (0x3)")) {
            try AttestationKeyPublic(parsing: Self.akPublic(key, curve: 4))
        }
        // A decryption key (the EK's attributes) is not an attestation key.
        #expect(throws: AttestationError.self) { try AttestationKeyPublic(parsing: Self.akPublic(key, attributes: 0x0003_00B2)) }
        // The name is nameAlg ‖ SHA-256 of the TPMT_PUBLIC.
        let pub = Self.akPublic(key)
        #expect(try AttestationKeyPublic(parsing: pub).name == [0, 0x0B] + Array(SHA256.hash(data: pub.dropFirst(2))))
    }

    /// Truncations, bit flips and random bytes: every one ends in an
    /// AttestationError of one line, and none verifies.
    @Test func fuzzedAndTruncatedBlobsEndInOneLineErrors() throws {
        var random = SplitMix64.forTest()
        let nonce = random.bytes(32)
        let pcrs = Self.pcrs(&random)
        let (evidence, verifier) = try Self.signed(nonce: nonce, pcrs: pcrs)
        let pub = Self.akPublic(P256.Signing.PrivateKey().publicKey)
        var attempts: [[UInt8]] = []
        for length in 0..<evidence.attest.count { attempts.append(Array(evidence.attest.prefix(length))) }
        for _ in 0..<2000 {
            var mutated = evidence.attest
            for _ in 0..<Int(random.next() % 4 + 1) {
                mutated[Int(random.next() % UInt64(mutated.count))] = UInt8(truncatingIfNeeded: random.next())
            }
            attempts.append(mutated)
        }
        for _ in 0..<500 { attempts.append(random.bytes(Int(random.next() % 300))) }
        var refused = 0
        let unchanged = attempts.filter { $0 == evidence.attest }.count
        for bytes in attempts {
            var candidate = evidence
            candidate.attest = bytes
            do {
                _ = try verifier.verify(candidate, nonce: nonce)
                if bytes != evidence.attest { Issue.record("a changed quote verified: \(attestationHex(bytes))") }
            } catch {
                refused += 1
                #expect(!error.description.contains("\n") && error.description.hasPrefix("attestation: "), "\(error)")
            }
        }
        #expect(refused == attempts.count - unchanged)

        var keyAttempts: [[UInt8]] = (0..<pub.count).map { Array(pub.prefix($0)) }
        for _ in 0..<2000 {
            var mutated = pub
            mutated[Int(random.next() % UInt64(mutated.count))] = UInt8(truncatingIfNeeded: random.next())
            keyAttempts.append(mutated)
        }
        for bytes in keyAttempts {
            do {
                _ = try AttestationKeyPublic(parsing: bytes)
            } catch {
                #expect(!error.description.contains("\n") && error.description.hasPrefix("attestation: "), "\(error)")
            }
        }
    }
}

/// MakeCredential's input checks; the TPM round trip is in OutpostTrustTests (swtpm).
@Suite("Attestation: software MakeCredential inputs")
struct MakeCredentialInputTests {
    /// The TCG EK template's shape (restricted decrypt, AES-128-CFB) around `key`.
    static func ekPublic(_ key: P256.KeyAgreement.PublicKey, attributes: UInt32 = 0x0003_00B2, mode: UInt16 = 0x0043) -> [UInt8] {
        let be16 = QuoteVerifierTests.be16, be32 = QuoteVerifierTests.be32
        let point = Array(key.x963Representation.dropFirst())
        var area: [UInt8] = be16(0x0023) + be16(0x000B) + be32(attributes) + be16(32) + [UInt8](repeating: 0x83, count: 32)
        area += be16(0x0006) + be16(128) + be16(mode) + be16(0x0010) + be16(3) + be16(0x0010)
        area += be16(32) + point.prefix(32) + be16(32) + point.suffix(32)
        return be16(UInt16(area.count)) + area
    }

    @Test func challengeHasTheShapeActivateCredentialReads() throws {
        let ek = Self.ekPublic(P256.KeyAgreement.PrivateKey().publicKey)
        let name: [UInt8] = [0x00, 0x0B] + [UInt8](repeating: 7, count: 32)
        let challenge = try CredentialChallenge.make(endorsementKeyPublic: ek, name: name, credential: [1, 2, 3])
        // TPM2B_ID_OBJECT: size, TPM2B integrity HMAC (32), then the 2 + 3 encrypted bytes.
        #expect(challenge.credentialBlob.count == 2 + 2 + 32 + 5)
        #expect(Array(challenge.credentialBlob.prefix(4)) == [0, 39, 0, 32])
        // TPM2B_ENCRYPTED_SECRET: a TPMS_ECC_POINT, 32-byte x and y.
        #expect(challenge.encryptedSecret.count == 2 + 68 && Array(challenge.encryptedSecret.prefix(4)) == [0, 68, 0, 32])
        // A fresh ephemeral key each time: two challenges for the same secret differ.
        let again = try CredentialChallenge.make(endorsementKeyPublic: ek, name: name, credential: [1, 2, 3])
        #expect(again.encryptedSecret != challenge.encryptedSecret)
    }

    @Test func refusesWhatCannotBeACredentialChallenge() throws {
        let key = P256.KeyAgreement.PrivateKey().publicKey
        let name: [UInt8] = [0x00, 0x0B] + [UInt8](repeating: 7, count: 32)
        let cases: [([UInt8], [UInt8], [UInt8], String)] = [
            (Self.ekPublic(key), name, [], "credential: 0 bytes is not 1 to 32 bytes"),
            (Self.ekPublic(key), name, [UInt8](repeating: 1, count: 33), "credential: 33 bytes is not 1 to 32 bytes"),
            (Self.ekPublic(key), Array(name.prefix(20)), [1], "TPM2B_NAME.name at offset 0"),
            (Self.ekPublic(key, attributes: 0x0005_0072), name, [1], "not a restricted decryption key"),
            (Self.ekPublic(key, mode: 0x0044), name, [1], "not AES-128-CFB"),
            (Array(Self.ekPublic(key).dropLast(3)), name, [1], "TPM2B_PUBLIC.size at offset 0"),
        ]
        for (ek, name, credential, text) in cases {
            do {
                _ = try CredentialChallenge.make(endorsementKeyPublic: ek, name: name, credential: credential)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.contains(text) && !error.description.contains("\n"), "\(error)")
            }
        }
    }
}
