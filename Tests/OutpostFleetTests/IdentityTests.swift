import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostFleet

@Suite("Fleet: software device identity")
struct IdentityTests {
    @Test func firstUseMakesAPrivateKeyAndACertificateNamedBySerialAndLaterLoadsReuseThem() throws {
        let tmp = try TemporaryDirectory("identity")
        let dir = tmp.path + "/fleet"
        let first = try SoftwareIdentity.loadOrCreate(directory: dir, serial: "SN-0042")
        #expect(first.serial == "SN-0042")
        #expect(try fileMode(dir + "/device.key.pem") == 0o600)
        #expect(try fileMode(dir) == 0o700)
        let subject = try sh("openssl", "x509", "-in", dir + "/device.cert.pem", "-noout", "-subject", "-enddate")
        #expect(subject.contains("CN = SN-0042"), "\(subject)")
        #expect(subject.contains("9999"), "\(subject)")
        let key = try sh("openssl", "pkey", "-in", dir + "/device.key.pem", "-noout", "-text")
        #expect(key.contains("P-256") || key.contains("prime256v1"), "\(key)")
        // No temp files left behind by the atomic writes.
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        #expect(Set(names) == ["device.key.pem", "device.cert.pem"], "\(names)")

        let again = try SoftwareIdentity.loadOrCreate(directory: dir, serial: "SN-0042")
        #expect(again.certificatePEM == first.certificatePEM)
        #expect(again.privateKeyPEM == first.privateKeyPEM)
    }

    @Test func aGeneratedSerialIsStoredAndKept() throws {
        let tmp = try TemporaryDirectory("identity-serial")
        let one = try SoftwareIdentity.loadOrCreate(directory: tmp.path, serial: nil)
        #expect(one.serial.hasPrefix("OP-") && one.serial.count == 15, "\(one.serial)")
        let two = try SoftwareIdentity.loadOrCreate(directory: tmp.path, serial: nil)
        #expect(two.serial == one.serial)
        #expect(throws: FleetError.self) { _ = try SoftwareIdentity.loadOrCreate(directory: tmp.path + "/x", serial: "bad serial/") }
    }

    @Test func signatureVerifiesWithTheCertificatesKey() throws {
        let tmp = try TemporaryDirectory("identity-sign")
        let identity = try SoftwareIdentity.loadOrCreate(directory: tmp.path, serial: "SN-1")
        let message = Array("attest me".utf8)
        let signature = try identity.sign(message)
        try Data(message).write(to: URL(fileURLWithPath: tmp.path + "/msg"))
        try Data(signature).write(to: URL(fileURLWithPath: tmp.path + "/sig"))
        try sh("openssl", "x509", "-in", tmp.path + "/device.cert.pem", "-pubkey", "-noout", "-out", tmp.path + "/pub.pem")
        let verified = try sh("openssl", "dgst", "-sha256", "-verify", tmp.path + "/pub.pem", "-signature", tmp.path + "/sig", tmp.path + "/msg")
        #expect(verified.contains("Verified OK"))
        // A different message does not verify with the same signature.
        try Data("attest you".utf8).write(to: URL(fileURLWithPath: tmp.path + "/msg"))
        #expect(throws: (any Error).self) {
            try sh("openssl", "dgst", "-sha256", "-verify", tmp.path + "/pub.pem", "-signature", tmp.path + "/sig", tmp.path + "/msg")
        }
    }

    @Test func aCorruptedKeyFileIsAnErrorNotANewIdentity() throws {
        let tmp = try TemporaryDirectory("identity-corrupt")
        _ = try SoftwareIdentity.loadOrCreate(directory: tmp.path, serial: "SN-2")
        try "garbage".write(toFile: tmp.path + "/device.key.pem", atomically: true, encoding: .utf8)
        do {
            _ = try SoftwareIdentity.loadOrCreate(directory: tmp.path, serial: "SN-2")
            Issue.record("a corrupted key was accepted")
        } catch {
            #expect(error.description.contains("device identity"), "\(error)")
        }
    }
}
