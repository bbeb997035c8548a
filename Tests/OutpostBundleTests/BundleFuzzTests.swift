import Foundation
import OutpostBundle
import Testing

/// Random and mutated input must end in a BundleError, never a crash or an acceptance.
@Suite struct BundleFuzzTests {
    let key = SigningKey.generate()

    @Test func randomBytesNeverCrashTheParser() {
        var g = SplitMix64(state: 42)
        let trust = TrustStore(anchors: [key.key.publicKey])
        for i in 0..<3000 {
            let n = Int(g.next() % 9000)
            var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: g.next()) }
            if i % 2 == 0, n >= 8 { bytes.replaceSubrange(0..<8, with: Array("OUTPOSTB".utf8)) }
            if i % 4 == 0, n >= 16 { bytes.replaceSubrange(8..<16, with: [1, 0, 64, 0, 1, 0, 88, 0]) }
            #expect(throws: BundleError.self) { try verifyAll(bytes, trust: trust) }
        }
    }

    @Test func randomMutationsOfAValidBundleAreRefused() throws {
        var g = SplitMix64(state: 7)
        let trust = TrustStore(anchors: [key.key.publicKey])
        let bytes = try makeBundle(payload(3000), keys: [key])
        for _ in 0..<2000 {
            var t = bytes
            for _ in 0..<(1 + Int(g.next() % 4)) {
                let pos = Int(g.next() % UInt64(t.count))
                let v = UInt8(truncatingIfNeeded: g.next())
                t[pos] = t[pos] == v ? v ^ 0xFF : v
            }
            if g.next() % 5 == 0 { t = Array(t.prefix(Int(g.next() % UInt64(t.count)))) }
            #expect(throws: BundleError.self) { try verifyAll(t, trust: trust) }
        }
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
