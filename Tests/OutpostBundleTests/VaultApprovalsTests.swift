import Crypto
import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing

/// The release key's approvals as the builder writes them (vault.json, a
/// manifest's `vault`) and as the device reads them before it asks the TPM.
@Suite struct VaultApprovalsTests {
    static let pcrs: [String: BundleManifest.SlotPCRs] = [
        "IMGA": .init(pcr8: String(repeating: "1a", count: 32), pcr9: String(repeating: "2b", count: 32)),
        "IMGB": .init(pcr8: String(repeating: "3c", count: 32), pcr9: String(repeating: "2b", count: 32)),
    ]

    static func signed(_ key: SigningKey, security: UInt64 = 3) throws -> VaultApprovals {
        try VaultApprovals.sign(pcrs: pcrs, securityVersion: security, osVersion: "2.0.0", key: key)
    }

    /// Rewrites one field of the encoded file and decodes it again, as a device would read a damaged vault.json.
    static func tampered(_ v: VaultApprovals, slot: String, field: String, flip: (String) -> String) throws -> [UInt8] {
        var object = try #require(try JSONSerialization.jsonObject(with: Data(try v.encoded())) as? [String: Any])
        var slots = try #require(object["slots"] as? [String: Any])
        var one = try #require(slots[slot] as? [String: Any])
        one[field] = flip(try #require(one[field] as? String))
        slots[slot] = one
        object["slots"] = slots
        return Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    /// Flips the lowest bit of the hex digit at `index`.
    static func flipDigit(_ s: String, at index: Int = 10) -> String {
        var u = Array(s.utf8)
        u[index] = u[index] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
        return String(decoding: u, as: UTF8.self)
    }

    @Test func signedApprovalsPassTheTrustCheckAndRecomputeEachSlotsPolicy() throws {
        let key = SigningKey.generate()
        let v = try Self.signed(key)
        try v.check(trust: TrustStore(anchors: [key.key.publicKey]))
        #expect(v.keyID == key.keyID.description && v.floorHandle == 0x0180_0030 && v.formatVersion == 1)
        for (name, p) in Self.pcrs {
            let (approved, signature) = try v.approval(forSlot: name)
            let expected = try VaultPolicy.approved(slot: p, securityVersion: 3, floorIndex: try VaultPolicy.floorIndex)
            #expect(approved.policy == expected)
            #expect(approved.isSigned(by: key.key.publicKey, signature))
            #expect(try v.signatureVerifies(forSlot: name))
        }
        // The file round-trips, and signing is deterministic (reproducible images).
        let bytes = try v.encoded()
        #expect(try VaultApprovals.decode(bytes, source: "vault.json") == v)
        #expect(try Self.signed(key).encoded() == bytes)
        #expect(try Self.signed(key, security: 4).encoded() != bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("\"approvedPolicy\"") && text.contains("\"publicKey\" : \"-----BEGIN PUBLIC KEY-----"))
    }

    @Test(arguments: ["pcr8", "pcr9", "approvedPolicy", "signature"])
    func aFlippedDigitIsRefusedWithALineNamingTheField(field: String) throws {
        let key = SigningKey.generate()
        let trust = TrustStore(anchors: [key.key.publicKey])
        let bytes = try Self.tampered(try Self.signed(key), slot: "IMGB", field: field) { Self.flipDigit($0) }
        do {
            // A changed PCR or policy no longer matches the recomputed digest (decode refuses it);
            // a changed signature decodes but does not verify.
            try VaultApprovals.decode(bytes, source: "/config/vault.json").check(trust: trust)
            Issue.record("a flipped \(field) was accepted")
        } catch {
            let line = "\(error)"
            #expect(!line.contains("\n"))
            #expect(line.contains("/config/vault.json"), "\(line)")
            #expect(line.contains(field), "\(line)")
            // Which of pcr8, pcr9 and the stored digest is wrong cannot be told apart: they disagree.
            #expect(line.contains(field == "signature" ? "field 'slots.IMGB.signature'" : "field 'slots.IMGB.approvedPolicy'"), "\(line)")
        }
    }

    @Test func aSignatureForAnotherSlotOrByAnotherKeyIsRefused() throws {
        let key = SigningKey.generate()
        let v = try Self.signed(key)
        let swapped = try Self.tampered(v, slot: "IMGB", field: "signature") { _ in v.slots["IMGA"]?.signature ?? "" }
        #expect(throws: BundleError.vaultInvalid(source: "x", field: "slots.IMGB.signature", reason: "does not verify with key \(key.keyID)")) {
            try VaultApprovals.decode(swapped, source: "x").check(trust: TrustStore(anchors: [key.key.publicKey]))
        }
        let other = SigningKey.generate()
        #expect(throws: BundleError.vaultInvalid(source: "", field: "publicKey", reason: "key \(key.keyID) is not a trust anchor")) {
            try v.check(trust: TrustStore(anchors: [other.key.publicKey]))
        }
        #expect(throws: BundleError.vaultInvalid(source: "", field: "publicKey", reason: "key \(key.keyID) is revoked")) {
            try v.check(trust: TrustStore(anchors: [key.key.publicKey], revoked: [key.keyID]))
        }
    }

    @Test func malformedFilesGiveOneLineWithThePathAndField() throws {
        let v = try Self.signed(SigningKey.generate())
        var object = try #require(try JSONSerialization.jsonObject(with: Data(try v.encoded())) as? [String: Any])
        object["securityVersion"] = "three"
        let wrongType = Array(try JSONSerialization.data(withJSONObject: object))
        #expect(throws: BundleError.self) { try VaultApprovals.decode(wrongType, source: "/config/vault.json") }
        do { _ = try VaultApprovals.decode(wrongType, source: "/config/vault.json") } catch {
            #expect("\(error)".hasPrefix("vault approvals /config/vault.json: field 'securityVersion'"), "\(error)")
        }
        object["securityVersion"] = 3
        object["keyID"] = "0000000000000000"
        do { _ = try VaultApprovals.decode(Array(try JSONSerialization.data(withJSONObject: object)), source: "f"); Issue.record("accepted") } catch {
            #expect("\(error)".contains("field 'keyID'"), "\(error)")
        }
        #expect(throws: BundleError.vaultInvalid(source: "/nonexistent/vault.json", field: "(file)", reason: "cannot read the file")) {
            try VaultApprovals.load(path: "/nonexistent/vault.json")
        }
        // A changed security version changes every recomputed policy.
        object["keyID"] = v.keyID
        object["securityVersion"] = 4
        do { _ = try VaultApprovals.decode(Array(try JSONSerialization.data(withJSONObject: object)), source: "f"); Issue.record("accepted") } catch {
            #expect("\(error)".contains("slots.IMGA.approvedPolicy"), "\(error)")
        }
        // Random bytes end in an error, never a crash.
        var random = SplitMix64.forTest()
        for _ in 0..<200 {
            var bytes = try v.encoded()
            for _ in 0..<3 { bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next()) }
            if let decoded = try? VaultApprovals.decode(bytes, source: "f") {
                // The only harmless changes are whitespace-like or inside the PEM's base64 being identical.
                #expect(decoded.slots.count == 2)
            }
        }
    }

    @Test func aManifestWithoutVaultDecodesAndEncodesAsBefore() throws {
        let p = payload(100)
        let m = manifest(for: p)
        let bytes = try m.encoded()
        #expect(!String(decoding: bytes, as: UTF8.self).contains("vault"))
        // A manifest as written before the field existed.
        let old = #"{"arch":"x86_64","board":"generic-efi","formatVersion":1,"osVersion":"1.0.0","payloadSHA256":"\#(m.payloadSHA256)","payloadSize":100,"pcrs":{},"securityVersion":1,"verity":{"hashOffset":100,"rootDataBlocks":1,"rootHash":"\#(m.verity.rootHash)","rootOffset":0,"salt":"00"}}"#
        let decoded = try BundleManifest.decode(Array(old.utf8))
        #expect(decoded.vault == nil && decoded.osVersion == "1.0.0")
        let key = SigningKey.generate()
        try verifyAll(try makeBundle(p, keys: [key]), trust: TrustStore(anchors: [key.key.publicKey]))
    }

    @Test func theManifestsApprovalsMustMatchItsVersionsAndPCRs() throws {
        let p = payload(100)
        let key = SigningKey.generate()
        var m = manifest(for: p)  // security 3, version 2.0.0, PCRs for IMGA
        m.vault = try VaultApprovals.sign(pcrs: m.pcrs, securityVersion: 3, osVersion: "2.0.0", key: key)
        let trust = TrustStore(anchors: [key.key.publicKey])
        let v = try verifyAll(try makeBundle(p, keys: [key], manifest: m), trust: trust)
        #expect(v.manifest.vault == m.vault)
        var wrong = m
        wrong.vault = try VaultApprovals.sign(pcrs: m.pcrs, securityVersion: 2, osVersion: "2.0.0", key: key)
        #expect(throws: BundleError.manifestInvalid(field: "vault.securityVersion", reason: "2 is not the manifest's 3")) { try wrong.encoded() }
        wrong.vault = try VaultApprovals.sign(pcrs: Self.pcrs, securityVersion: 3, osVersion: "2.0.0", key: key)
        #expect(throws: BundleError.self) { try wrong.encoded() }
        // Approvals by a key the device does not trust make the bundle unverifiable, though the bundle's own signature is good.
        let stranger = SigningKey.generate()
        var foreign = m
        foreign.vault = try VaultApprovals.sign(pcrs: m.pcrs, securityVersion: 3, osVersion: "2.0.0", key: stranger)
        #expect(throws: BundleError.vaultInvalid(source: "in the manifest", field: "publicKey", reason: "key \(stranger.keyID) is not a trust anchor")) {
            try verifyAll(try makeBundle(p, keys: [key], manifest: foreign), trust: trust)
        }
    }

    /// openssl, independently: a bundle's approvals, after create → verify, carry signatures over
    /// approvedPolicy ‖ "outpost-vault-v1" that verify with the release key's PEM.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func opensslVerifiesTheApprovalsABundleCarries() throws {
        let tmp = try TemporaryDirectory("vault-approvals-openssl")
        let p = payload(100)
        let key = SigningKey.generate()
        var m = manifest(for: p)
        m.pcrs = Self.pcrs
        m.vault = try VaultApprovals.sign(pcrs: m.pcrs, securityVersion: m.securityVersion, osVersion: m.osVersion, key: key)
        let verified = try verifyAll(try makeBundle(p, keys: [key], manifest: m), trust: TrustStore(anchors: [key.key.publicKey]))
        let vault = try #require(verified.manifest.vault)
        try vault.publicKey.write(toFile: tmp.path + "/pub.pem", atomically: true, encoding: .utf8)
        for name in ["IMGA", "IMGB"] {
            let (approved, signature) = try vault.approval(forSlot: name)
            #expect(hex(approved.signedBytes) == (vault.slots[name]?.approvedPolicy ?? "") + hex(Array("outpost-vault-v1".utf8)))
            try Data(approved.signedBytes).write(to: URL(fileURLWithPath: tmp.path + "/signed"))
            try Data(try signature.der).write(to: URL(fileURLWithPath: tmp.path + "/sig.der"))
            let verify = ["/usr/bin/openssl", "dgst", "-sha256", "-verify", tmp.path + "/pub.pem", "-signature", tmp.path + "/sig.der", tmp.path + "/signed"]
            let good = try runCommand(verify)
            #expect(good.status == 0 && good.output.contains("Verified OK"), "\(name): \(good.output)")
            var other = approved.signedBytes
            other[0] ^= 1
            try Data(other).write(to: URL(fileURLWithPath: tmp.path + "/signed"))
            #expect(try runCommand(verify).status != 0)
        }
    }

    /// RFC 6979 A.2.5, P-256 with SHA-256, message "sample": the deterministic signer gives the published r and s.
    @Test func theDeterministicSignerMatchesRFC6979() throws {
        let x = try #require(bytes(fromHex: "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"))
        let key = try P256.Signing.PrivateKey(rawRepresentation: x)
        let sig = DeterministicECDSA.sign(Array("sample".utf8), key: key)
        #expect(hex(sig.prefix(32)) == "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716")
        #expect(hex(sig.suffix(32)) == "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8")
        var random = SplitMix64.forTest()
        for _ in 0..<20 {
            let k = SigningKey.generate()
            let message = random.bytes(Int(random.next() % 100))
            let raw = DeterministicECDSA.sign(message, key: k.key)
            #expect(k.key.publicKey.isValidSignature(try P256.Signing.ECDSASignature(rawRepresentation: raw), for: message))
        }
    }
}
