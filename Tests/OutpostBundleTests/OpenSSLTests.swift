import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing

/// An independent check: openssl verifies our DER signature over header+manifest.
@Suite struct OpenSSLTests {
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func opensslVerifiesTheBundleSignatureAndTheKeyID() throws {
        let key = SigningKey.generate()
        let bytes = try makeBundle(payload(2000), keys: [key])
        let p = try BundlePrologue.read(from: MemoryPayloadSource(bytes))
        let dir = try TemporaryDirectory.create("bundle")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(p.signedBytes).write(to: URL(fileURLWithPath: dir + "/data"))
        try Data(p.signatures[0].der).write(to: URL(fileURLWithPath: dir + "/sig.der"))
        try key.publicPEM.write(toFile: dir + "/pub.pem", atomically: true, encoding: .utf8)
        let out = try run(["dgst", "-sha256", "-verify", dir + "/pub.pem", "-signature", dir + "/sig.der", dir + "/data"])
        #expect(out.status == 0)
        #expect(out.output.contains("Verified OK"))

        var tampered = p.signedBytes
        tampered[70] ^= 1
        try Data(tampered).write(to: URL(fileURLWithPath: dir + "/data"))
        #expect(try run(["dgst", "-sha256", "-verify", dir + "/pub.pem", "-signature", dir + "/sig.der", dir + "/data"]).status != 0)

        // Key ID = first 16 hex of sha256(SPKI DER), as openssl computes it too.
        _ = try run(["pkey", "-pubin", "-in", dir + "/pub.pem", "-outform", "DER", "-out", dir + "/pub.der"])
        let der = try Data(contentsOf: URL(fileURLWithPath: dir + "/pub.der"))
        let sha = try run(["dgst", "-sha256", "-r", dir + "/pub.der"]).output
        #expect(der.count == 91)
        #expect(sha.hasPrefix(key.keyID.description))
    }

    private func run(_ args: [String]) throws -> CommandResult { try runCommand(["/usr/bin/openssl"] + args) }
}
