import Crypto
import Foundation
import SwiftASN1
import X509

/// Certificates the controller makes and reads. Every key is P-256: the
/// devices' own keys are, and one curve keeps the TLS stacks on both ends
/// (BoringSSL here, OpenSSL on the device) on their best-tested path.
public enum PKI {
    /// A certificate with its key, both PEM.
    public struct Issued: Sendable {
        public var certificatePEM: String
        public var keyPEM: String
        public var certificate: Certificate
        public var key: P256.Signing.PrivateKey
    }

    static let lifetime: TimeInterval = 20 * 365 * 86_400

    /// The controller CA: the root devices pin (CONFIG's root-ca.pem). It
    /// signs the server certificate and the onboarding certificate.
    public static func makeCA(name: String, now: Date = Date()) throws(ControllerError) -> Issued {
        let key = P256.Signing.PrivateKey()
        do {
            let dn = try DistinguishedName { CommonName(name) }
            let cert = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                notValidBefore: now - 3600, notValidAfter: now + lifetime,
                issuer: dn, subject: dn,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
                },
                issuerPrivateKey: .init(key))
            return Issued(certificatePEM: try pemLine(cert), keyPEM: key.pemRepresentation, certificate: cert, key: key)
        } catch {
            throw .certificate(what: "controller CA", reason: "cannot create it (\(error))")
        }
    }

    /// The TLS server certificate, with a subject alternative name for every
    /// host devices may use (a DNS name or an IPv4/IPv6 address).
    public static func makeServer(hosts: [String], ca: Issued, now: Date = Date()) throws(ControllerError) -> Issued {
        var names: [GeneralName] = []
        for h in hosts {
            if let ip = ipBytes(h) {
                names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip))))
            } else {
                names.append(.dnsName(h))
            }
        }
        return try issue(commonName: hosts.first ?? "outpost-controller", ca: ca, usage: .serverAuth, extraNames: names, now: now)
    }

    /// The onboarding certificate shared by a batch of devices: accepted for
    /// `register` only, and only when the allow-list lists it.
    public static func makeOnboarding(ca: Issued, now: Date = Date()) throws(ControllerError) -> Issued {
        try issue(commonName: "outpost-onboard", ca: ca, usage: .clientAuth, extraNames: [], now: now)
    }

    /// A device's own self-signed certificate, as a device makes it at first
    /// boot (used by the simulator and the tests).
    public static func makeSelfSigned(commonName: String, now: Date = Date()) throws(ControllerError) -> Issued {
        let key = P256.Signing.PrivateKey()
        do {
            let dn = try DistinguishedName { CommonName(commonName) }
            let cert = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                notValidBefore: now - 3600, notValidAfter: now + lifetime, issuer: dn, subject: dn,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    try ExtendedKeyUsage([.clientAuth])
                },
                issuerPrivateKey: .init(key))
            return Issued(certificatePEM: try pemLine(cert), keyPEM: key.pemRepresentation, certificate: cert, key: key)
        } catch {
            throw .certificate(what: "device certificate", reason: "cannot create it (\(error))")
        }
    }

    private static func issue(commonName: String, ca: Issued, usage: ExtendedKeyUsage.Usage, extraNames: [GeneralName],
                              now: Date) throws(ControllerError) -> Issued {
        let key = P256.Signing.PrivateKey()
        do {
            let subject = try DistinguishedName { CommonName(commonName) }
            let cert = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                notValidBefore: now - 3600, notValidAfter: now + lifetime,
                issuer: ca.certificate.subject, subject: subject,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([usage])
                    AuthorityKeyIdentifier(keyIdentifier: try ca.certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
                    if !extraNames.isEmpty { SubjectAlternativeNames(extraNames) }
                },
                issuerPrivateKey: .init(ca.key))
            return Issued(certificatePEM: try pemLine(cert), keyPEM: key.pemRepresentation, certificate: cert, key: key)
        } catch {
            throw .certificate(what: commonName, reason: "cannot create the certificate (\(error))")
        }
    }

    /// Loads a certificate and key written by `init`.
    public static func load(certificate certPath: String, key keyPath: String) throws(ControllerError) -> Issued {
        let certPEM = try readText(certPath)
        let keyPEM = try readText(keyPath)
        let cert = try parseCertificate(pem: certPEM, what: certPath)
        do {
            let key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
            return Issued(certificatePEM: certPEM, keyPEM: keyPEM, certificate: cert, key: key)
        } catch {
            throw .certificate(what: keyPath, reason: "not a P-256 private key in PEM")
        }
    }

    /// Parses one PEM certificate.
    public static func parseCertificate(pem: String, what: String) throws(ControllerError) -> Certificate {
        do { return try Certificate(pemEncoded: pem) } catch {
            throw .certificate(what: what, reason: "not a PEM X.509 certificate")
        }
    }

    /// A device certificate as registration accepts it: X.509, P-256 key.
    /// Returns its DER for the fingerprint.
    public static func checkDeviceCertificate(pem: String) throws(ControllerError) -> [UInt8] {
        let cert = try parseCertificate(pem: pem, what: "device_cert_pem")
        guard P256.Signing.PublicKey(cert.publicKey) != nil else {
            throw .certificate(what: "device_cert_pem", reason: "the key is not P-256")
        }
        return try der(cert)
    }

    public static func der(_ cert: Certificate) throws(ControllerError) -> [UInt8] {
        var s = DER.Serializer()
        do { try s.serialize(cert) } catch { throw .certificate(what: "certificate", reason: "cannot encode it as DER") }
        return s.serializedBytes
    }

    /// The identity of a certificate: lowercase hex SHA-256 over its DER
    /// (what `openssl x509 -noout -fingerprint -sha256` prints, without colons).
    public static func fingerprint(der: some Sequence<UInt8>) -> String {
        SHA256.hash(data: Array(der)).map { String(format: "%02x", $0) }.joined()
    }

    public static func fingerprint(pem: String, what: String) throws(ControllerError) -> String {
        fingerprint(der: try der(try parseCertificate(pem: pem, what: what)))
    }

    /// PEM text ending in a newline, so PEM files can be concatenated (chains).
    static func pemLine(_ cert: Certificate) throws -> String {
        let s = try cert.serializeAsPEM().pemString
        return s.hasSuffix("\n") ? s : s + "\n"
    }

    static func ipBytes(_ s: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    static func readText(_ path: String) throws(ControllerError) -> String {
        guard let d = FileManager.default.contents(atPath: path) else { throw .io(path: path, reason: "cannot read the file") }
        return String(decoding: d, as: UTF8.self)
    }
}
