import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing

@Suite struct BundleFormatTests {
    let key = SigningKey.generate()
    var trust: TrustStore { TrustStore(anchors: [key.key.publicKey]) }

    @Test func bundleRoundTripsManifestAndPayload() throws {
        let p = payload(10_000)
        let bytes = try makeBundle(p, keys: [key])
        let v = try verifyAll(bytes, trust: trust, policy: BundlePolicy(deviceFloor: 3, board: "generic-efi", arch: "x86_64", slotSize: 10_000))
        #expect(v.manifest == manifest(for: p))
        #expect(v.signedBy == key.keyID)
        #expect(v.payloadOffset % 4096 == 0)
        #expect(Array(bytes[Int(v.payloadOffset)...]) == p)
    }

    @Test func headerGoldenBytes() {
        let h = BundleHeader(signatureCount: 2, manifestLength: 0x123, payloadLength: 0x0102_0304_0506)
        let b = h.encode()
        #expect(b.count == 64)
        #expect(Array(b[0..<8]) == Array("OUTPOSTB".utf8))
        #expect(Array(b[8..<24]) == [1, 0, 64, 0, 2, 0, 88, 0, 0x23, 0x01, 0, 0, 0, 0, 0, 0])
        #expect(Array(b[24..<40]) == [0, 0x10, 0, 0, 0, 0, 0, 0, 6, 5, 4, 3, 2, 1, 0, 0])
        #expect(b[40...].allSatisfy { $0 == 0 })
    }

    @Test func aFlippedByteAnywhereIsRefused() throws {
        let p = payload(6000)
        let bytes = try makeBundle(p, keys: [key])
        let v = try verifyAll(bytes, trust: trust)
        let payloadStart = Int(v.payloadOffset)
        let signedEnd = 64 + v.prologue.manifestBytes.count
        // Every byte of header, manifest, signature records and padding; every 7th of the payload.
        var positions = Array(0..<payloadStart)
        positions += stride(from: payloadStart, to: bytes.count, by: 7)
        positions.append(bytes.count - 1)
        var refusedBySignature = 0
        for pos in positions {
            for mask: UInt8 in [0x01, 0x80] {
                var t = bytes
                t[pos] ^= mask
                do {
                    try verifyAll(t, trust: trust)
                    Issue.record("flip of bit \(mask) at byte \(pos) was accepted")
                } catch let e as BundleError {
                    if pos >= 8, pos < signedEnd, case .signatureInvalid = e { refusedBySignature += 1 }
                }
            }
        }
        #expect(refusedBySignature > 0)
        print("flipped-byte positions checked: \(positions.count * 2)")
    }

    @Test func everyTruncationIsRefusedWithItsOffset() throws {
        let bytes = try makeBundle(payload(5000), keys: [key])
        for length in stride(from: 0, to: bytes.count, by: 13) {
            #expect(throws: BundleError.self) { try verifyAll(Array(bytes[..<length]), trust: trust) }
        }
        do {
            try verifyAll(Array(bytes.dropLast(10)), trust: trust)
            Issue.record("truncated bundle accepted")
        } catch let e as BundleError {
            #expect("\(e)".hasPrefix("truncated at offset \(bytes.count - 10)"))
        }
        #expect(throws: BundleError.trailingData(offset: UInt64(bytes.count), extra: 1)) {
            try verifyAll(bytes + [0], trust: trust)
        }
    }

    @Test func aBundleFromAnUnknownKeyIsRefused() throws {
        let other = SigningKey.generate()
        let bytes = try makeBundle(payload(100), keys: [other])
        #expect(throws: BundleError.keyUnknown(keyIDs: [other.keyID])) { try verifyAll(bytes, trust: trust) }
    }

    @Test func aRevokedKeyIsRefused() throws {
        let bytes = try makeBundle(payload(100), keys: [key])
        let revoked = TrustStore(anchors: [key.key.publicKey], revoked: [key.keyID])
        #expect(throws: BundleError.keyRevoked(keyID: key.keyID)) { try verifyAll(bytes, trust: revoked) }
        #expect("\(BundleError.keyRevoked(keyID: key.keyID))" == "key \(key.keyID) is revoked")
    }

    @Test func aLowerSecurityVersionIsRefused() throws {
        let p = payload(100)
        let bytes = try makeBundle(p, keys: [key], manifest: manifest(for: p, security: 3))
        #expect(throws: BundleError.securityVersionBelowFloor(version: 3, floor: 5)) {
            try verifyAll(bytes, trust: trust, policy: BundlePolicy(deviceFloor: 5))
        }
        try verifyAll(bytes, trust: trust, policy: BundlePolicy(deviceFloor: 3))
    }

    @Test func wrongBoardArchAndOversizedPayloadAreRefused() throws {
        let bytes = try makeBundle(payload(5000), keys: [key])
        #expect(throws: BundleError.boardMismatch(bundle: "generic-efi", device: "rpi4")) {
            try verifyAll(bytes, trust: trust, policy: BundlePolicy(board: "rpi4"))
        }
        #expect(throws: BundleError.archMismatch(bundle: "x86_64", device: "aarch64")) {
            try verifyAll(bytes, trust: trust, policy: BundlePolicy(arch: "aarch64"))
        }
        #expect(throws: BundleError.payloadTooLarge(size: 5000, slotSize: 4096)) {
            try verifyAll(bytes, trust: trust, policy: BundlePolicy(slotSize: 4096))
        }
    }

    @Test func aPayloadThatDoesNotMatchItsManifestIsRefused() throws {
        let p = payload(3000)
        var m = manifest(for: p)
        m.payloadSHA256 = String(repeating: "0", count: 64)
        let bytes = try makeBundle(p, keys: [key], manifest: m)
        #expect(throws: BundleError.payloadDigestMismatch(expected: m.payloadSHA256, actual: manifest(for: p).payloadSHA256)) {
            try verifyAll(bytes, trust: trust)
        }
    }

    @Test func keyRotationAcceptsEitherAnchorAndRevocationRetiresTheOld() throws {
        let old = key, new = SigningKey.generate()
        let both = TrustStore(anchors: [old.key.publicKey, new.key.publicKey])
        let p = payload(700)
        for signers in [[old], [new], [old, new], [new, old]] {
            let v = try verifyAll(try makeBundle(p, keys: signers), trust: both)
            #expect(v.signedBy == signers[0].keyID)
        }
        let rotated = TrustStore(anchors: [old.key.publicKey, new.key.publicKey], revoked: [old.keyID])
        #expect(throws: BundleError.keyRevoked(keyID: old.keyID)) { try verifyAll(try makeBundle(p, keys: [old]), trust: rotated) }
        #expect(try verifyAll(try makeBundle(p, keys: [old, new]), trust: rotated).signedBy == new.keyID)
    }

    @Test func trustStoreLoadsPublicKeysSkipsPrivateOnesAndReadsRevocations() throws {
        let dir = try TemporaryDirectory.create("bundle")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let second = SigningKey.generate()
        try key.publicPEM.write(toFile: dir + "/a.pub.pem", atomically: true, encoding: .utf8)
        try key.privatePEM.write(toFile: dir + "/a.key.pem", atomically: true, encoding: .utf8)
        try second.publicPEM.write(toFile: dir + "/b.pem", atomically: true, encoding: .utf8)
        try "# retired 2025\n\(second.keyID)\n\n".write(toFile: dir + "/revoked.txt", atomically: true, encoding: .utf8)
        let store = try TrustStore.load(directory: dir)
        #expect(Set(store.anchors.keys) == [key.keyID, second.keyID])
        #expect(store.revoked == [second.keyID])
        try "not-a-key-id\n".write(toFile: dir + "/revoked.txt", atomically: true, encoding: .utf8)
        #expect(throws: BundleError.trustStore(path: dir + "/revoked.txt", reason: "line 1: 'not-a-key-id' is not a 16-hex-digit key ID")) {
            try TrustStore.load(directory: dir)
        }
    }
}
