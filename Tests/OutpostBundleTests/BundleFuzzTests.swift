import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing

/// Random and mutated input must end in a BundleError, never a crash or an acceptance.
@Suite struct BundleFuzzTests {
    let key = SigningKey.generate()

    /// Every hundredth input is a real bundle with a random payload, which must verify: a
    /// verifier that refused everything would fail here, not pass.
    @Test func randomBytesNeverCrashTheParser() throws {
        var g = SplitMix64.forTest()
        let trust = TrustStore(anchors: [key.key.publicKey])
        var accepted = 0, refused = 0
        for i in 0..<3000 {
            if i % 100 == 0 {
                let real = try makeBundle(g.bytes(1 + Int(g.next() % 9000)), keys: [key])
                #expect(throws: Never.self, "a valid bundle was refused (seed \(g.seed))") { try verifyAll(real, trust: trust) }
                if (try? verifyAll(real, trust: trust)) != nil { accepted += 1 }
                continue
            }
            let n = Int(g.next() % 9000)
            var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: g.next()) }
            if i % 2 == 0, n >= 8 { bytes.replaceSubrange(0..<8, with: Array("OUTPOSTB".utf8)) }
            if i % 4 == 0, n >= 16 { bytes.replaceSubrange(8..<16, with: [1, 0, 64, 0, 1, 0, 88, 0]) }
            if #expect(throws: BundleError.self, "seed \(g.seed)", performing: { try verifyAll(bytes, trust: trust) }) != nil {
                refused += 1
            }
        }
        #expect(accepted == 30 && refused == 2970, "accepted \(accepted), refused \(refused) (seed \(g.seed))")
    }

    /// Mutations are refused; the unmutated bundle, and any bundle that differs only in a
    /// re-signed manifest, still verifies.
    @Test func randomMutationsOfAValidBundleAreRefused() throws {
        var g = SplitMix64.forTest()
        let trust = TrustStore(anchors: [key.key.publicKey])
        let bytes = try makeBundle(payload(3000), keys: [key])
        var accepted = 0, refused = 0
        for round in 0..<2000 {
            if round % 100 == 0 {
                let p = g.bytes(1 + Int(g.next() % 4000))
                let real = try makeBundle(p, keys: [key], manifest: manifest(for: p, version: "2.\(g.next() % 100).0", security: g.next() % 10))
                for candidate in [bytes, real] where (try? verifyAll(candidate, trust: trust)) != nil { accepted += 1 }
                continue
            }
            var t = bytes
            for _ in 0..<(1 + Int(g.next() % 4)) {
                let pos = Int(g.next() % UInt64(t.count))
                let v = UInt8(truncatingIfNeeded: g.next())
                t[pos] = t[pos] == v ? v ^ 0xFF : v
            }
            if g.next() % 5 == 0 { t = Array(t.prefix(Int(g.next() % UInt64(t.count)))) }
            if #expect(throws: BundleError.self, "seed \(g.seed)", performing: { try verifyAll(t, trust: trust) }) != nil {
                refused += 1
            }
        }
        #expect(accepted == 40 && refused == 1980, "accepted \(accepted), refused \(refused) (seed \(g.seed))")
    }

    @Test func manifestGarbageUnderAValidSignatureIsAFieldError() throws {
        // A trusted signer that signs nonsense: the manifest decoder must still refuse cleanly.
        let junk = Array(#"{"osVersion": 5}"#.utf8)
        let header = BundleHeader(signatureCount: 1, manifestLength: junk.count, payloadLength: 10)
        let signed = header.encode() + junk
        var bytes = signed + (try key.sign(signed)).encode()
        bytes += repeatElement(0, count: Int(header.payloadOffset) - bytes.count) + payload(10)
        do {
            try verifyAll(bytes, trust: TrustStore(anchors: [key.key.publicKey]))
            Issue.record("garbage manifest accepted")
        } catch let BundleError.manifestInvalid(field, _) {
            #expect(!field.isEmpty)
        }
    }
}
