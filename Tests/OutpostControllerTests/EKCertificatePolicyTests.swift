import Crypto
import Foundation
import OutpostBundle
@testable import OutpostController
import SwiftASN1
import Testing
import X509

/// The EK certificate chain check on its own, with certificates made here: what an EK
/// certificate carries (critical SAN with the TPM maker, the TCG EKU) passes, expiry, a TLS
/// EKU, an unknown critical extension and a missing root are refused with one line.
@Suite("Controller: EK certificate chain policy")
struct EKCertificatePolicyTests {
    struct CA {
        let key: P256.Signing.PrivateKey
        let certificate: Certificate
        var record: EKCARecord { get throws { try #require(try EKCARecord.parse(pem: certificate.serializeAsPEM().pemString).first) } }
    }

    static func ca(_ name: String, issuer: CA? = nil) throws -> CA {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(name) }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: Date() - 3600, notValidAfter: Date() + 86400 * 365,
            issuer: issuer?.certificate.subject ?? subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true))
            },
            issuerPrivateKey: .init(issuer?.key ?? key))
        return CA(key: key, certificate: certificate)
    }

    /// An EK certificate as TPM makers issue them: empty subject, a critical SAN holding the
    /// TPM's maker, model and version (TCG OIDs 2.23.133.2.1–3), the EKU tcg-kp-EKCertificate.
    static func ekCertificate(issuer: CA, notValidAfter: Date = Date() + 86400,
                              usages: [ExtendedKeyUsage.Usage] = [.init(oid: EKCertificate.ekCertificateEKU)],
                              extra: Certificate.Extension? = nil) throws -> Certificate {
        let tpm = DistinguishedName([RelativeDistinguishedName([
            .init(type: [2, 23, 133, 2, 1], utf8String: "id:00001014"),
            .init(type: [2, 23, 133, 2, 2], utf8String: "swtpm"),
            .init(type: [2, 23, 133, 2, 3], utf8String: "id:20191023"),
        ])])
        var extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(SubjectAlternativeNames([.directoryName(tpm)]))
            try ExtendedKeyUsage(usages)
        }
        if let extra { try extensions.append(extra) }
        return try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(P256.Signing.PrivateKey().publicKey),
            notValidBefore: Date() - 7200, notValidAfter: notValidAfter,
            issuer: issuer.certificate.subject, subject: DistinguishedName(), signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions, issuerPrivateKey: .init(issuer.key))
    }

    static func refusal(_ cert: Certificate, _ authorities: [EKCARecord]) async -> String {
        do {
            let status = try await EKCertificate.verify(cert, authorities: authorities)
            return "accepted: \(status)"
        } catch {
            return error.status == 403 ? error.message : "status \(error.status): \(error.message)"
        }
    }

    @Test func anEKCertificateWithACriticalSANAndTheTCGEKUChainsThroughAnIntermediateToItsRoot() async throws {
        let root = try Self.ca("Test TPM Maker Root")
        let intermediate = try Self.ca("Test TPM Maker EK CA 01", issuer: root)
        let cert = try Self.ekCertificate(issuer: intermediate)
        let authorities = [try root.record, try intermediate.record]
        #expect(authorities.map(\.root) == [true, false])
        #expect(try await EKCertificate.verify(cert, authorities: authorities) == "verified by CN=Test TPM Maker Root")
        // Signed by the root itself, no intermediate needed.
        #expect(try await EKCertificate.verify(try Self.ekCertificate(issuer: root), authorities: [try root.record])
                == "verified by CN=Test TPM Maker Root")
        // No CA configured: recorded as not checked.
        #expect(try await EKCertificate.verify(cert, authorities: []) == "not checked: no EK CA configured")
    }

    @Test func aChainToNoConfiguredRootIsRefusedNamingTheIssuerAndTheRoots() async throws {
        let root = try Self.ca("Test TPM Maker Root")
        let intermediate = try Self.ca("Test TPM Maker EK CA 01", issuer: root)
        let other = try Self.ca("Other Maker Root")
        let cert = try Self.ekCertificate(issuer: intermediate)
        #expect(await Self.refusal(cert, [try other.record, try intermediate.record])
                == "the EK certificate issued by CN=Test TPM Maker EK CA 01 does not chain to a configured EK CA root (roots: CN=Other Maker Root)")
        // The intermediate alone is no trust anchor.
        #expect(await Self.refusal(cert, [try intermediate.record]).hasSuffix("(roots: none, only intermediates)"))
    }

    @Test func anExpiredEKCertificateATLSUsageAndAnUnknownCriticalExtensionAreRefused() async throws {
        let root = try Self.ca("Test TPM Maker Root")
        let authorities = [try root.record]
        let expired = await Self.refusal(try Self.ekCertificate(issuer: root, notValidAfter: Date() - 60), authorities)
        #expect(expired.hasPrefix("the EK certificate issued by CN=Test TPM Maker Root does not chain to a configured EK CA root"), "\(expired)")
        #expect(expired.hasSuffix(#"root: RFC5280Policy: Certificate "" has expired"#), "\(expired)")
        let tls = await Self.refusal(try Self.ekCertificate(issuer: root, usages: [.serverAuth]), authorities)
        #expect(tls.contains("lacks tcg-kp-EKCertificate (2.23.133.8.1)"), "\(tls)")
        let unknown = Certificate.Extension(oid: [1, 3, 6, 1, 4, 1, 99999, 1], critical: true, value: [0x05, 0x00])
        let critical = await Self.refusal(try Self.ekCertificate(issuer: root, extra: unknown), authorities)
        #expect(critical.hasPrefix("the EK certificate issued by CN=Test TPM Maker Root does not chain"), "\(critical)")
        // The same certificate without that extension passes: the refusals above are the changes'.
        #expect(await Self.refusal(try Self.ekCertificate(issuer: root), authorities) == "accepted: verified by CN=Test TPM Maker Root")
    }

    @Test func onlyCACertificatesInPEMAreAccepted() throws {
        let root = try Self.ca("Test TPM Maker Root")
        let leaf = try Self.ekCertificate(issuer: root)
        #expect(throws: ControllerError.self) { try EKCARecord.parse(pem: try leaf.serializeAsPEM().pemString) }
        #expect(throws: ControllerError.self) { try EKCARecord.parse(pem: "not a PEM file") }
        let both = try root.certificate.serializeAsPEM().pemString + "\n" + Self.ca("Second Root").certificate.serializeAsPEM().pemString
        let parsed = try EKCARecord.parse(pem: both)
        #expect(parsed.map(\.subject) == ["CN=Test TPM Maker Root", "CN=Second Root"] && parsed.allSatisfy(\.root))
        #expect(parsed[0].fingerprint == hex(Array(SHA256.hash(data: try root.certificate.serializeAsPEM().derBytes))))
    }
}
