// The EK certificate a TPM's maker stored in its NV, and the makers' CAs the operator trusts
// (`outpost-controller ek-ca add|list|remove`, kept in the fleet store so every replica
// sees the same list):
//
//   register with ek_certificate ──▶ parses, names ek_public? (else 400)
//        no EK CA configured      ──▶ "not checked: no EK CA configured"
//        chains to a configured CA ──▶ "verified by CN=…"
//        does not                  ──▶ 403 naming the certificate's issuer, nothing stored
//   register without one         ──▶ "no EK certificate in the TPM"
//
// A self-issued certificate added is a root (a trust anchor); any other is an intermediate, used
// only to build a chain to a root. The device sends the leaf only and the controller fetches
// nothing, so the maker's intermediate CAs are added with its root.

import Crypto
import Foundation
import OutpostAttestation
import OutpostBundle
import SwiftASN1
import X509

/// A TPM maker's CA the operator trusts for EK certificates.
public struct EKCARecord: Codable, Sendable, Equatable {
    /// Lowercase hex SHA-256 of the certificate's DER.
    public var fingerprint: String
    /// The subject as RFC 4514 text ("CN=…,O=…").
    public var subject: String
    /// Self-issued (subject = issuer): a trust anchor. Otherwise an intermediate.
    public var root: Bool
    public var pem: String
    public var addedMs: Int64

    public init(fingerprint: String, subject: String, root: Bool, pem: String, addedMs: Int64) {
        self.fingerprint = fingerprint
        self.subject = subject
        self.root = root
        self.pem = pem
        self.addedMs = addedMs
    }

    /// Every certificate in `pem` (a file may hold a maker's root and intermediates).
    static func parse(pem: String) throws -> [EKCARecord] {
        let documents: [PEMDocument]
        do { documents = try PEMDocument.parseMultiple(pemString: pem) } catch {
            throw ControllerError.invalidInput("not a PEM file: \(error)")
        }
        let certificates = documents.filter { $0.discriminator == "CERTIFICATE" }
        guard !certificates.isEmpty else { throw ControllerError.invalidInput("the PEM file holds no CERTIFICATE") }
        return try certificates.map { d in
            let cert: Certificate
            do { cert = try Certificate(derEncoded: d.derBytes) } catch {
                throw ControllerError.invalidInput("a CERTIFICATE in the PEM file is not X.509: \(error)")
            }
            if let bc = try? cert.extensions.basicConstraints, case .notCertificateAuthority = bc {
                throw ControllerError.invalidInput("\(cert.subject) is not a CA certificate (basicConstraints CA:FALSE)")
            }
            return EKCARecord(fingerprint: hex(Array(SHA256.hash(data: d.derBytes))), subject: String(describing: cert.subject),
                              root: cert.subject == cert.issuer, pem: d.pemString, addedMs: nowMs())
        }
    }
}

/// The EK certificate checks at registration.
enum EKCertificate {
    /// tcg-kp-EKCertificate (TCG EK Credential Profile): the EKU an EK certificate may carry.
    static let ekCertificateEKU: ASN1ObjectIdentifier = [2, 23, 133, 8, 1]
    static let noCertificate = "no EK certificate in the TPM"
    static let notChecked = "not checked: no EK CA configured"

    /// The certificate must parse and name the very EK the device registered.
    @discardableResult
    static func check(der: [UInt8], endorsementKeyPublic: [UInt8]) throws(APIError) -> Certificate {
        let cert: Certificate
        do { cert = try Certificate(derEncoded: der) } catch {
            throw .malformed("RegisterRequest.ek_certificate is not a DER X.509 certificate: \(error)")
        }
        let named: Certificate.PublicKey
        do {
            let point = try CredentialChallenge.endorsementKeyPoint(endorsementKeyPublic)
            named = Certificate.PublicKey(try P256.Signing.PublicKey(x963Representation: point))
        } catch {
            throw .malformed("RegisterRequest.ek_public: \(error)")
        }
        guard cert.publicKey == named else {
            throw .malformed("RegisterRequest.ek_certificate names another key than ek_public")
        }
        return cert
    }

    /// The status to record for `cert` against the configured CAs, or a 403 when CAs are
    /// configured and it chains to none of their roots (signatures, validity dates now, CA constraints).
    static func verify(_ cert: Certificate, authorities: [EKCARecord]) async throws(APIError) -> String {
        guard !authorities.isEmpty else { return notChecked }
        var roots: [Certificate] = []
        var intermediates: [Certificate] = []
        for a in authorities {
            guard let c = try? Certificate(pemEncoded: a.pem) else { continue }
            if a.root { roots.append(c) } else { intermediates.append(c) }
        }
        var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
            RFC5280Policy()
            EKCertificatePolicy()
        }
        switch await verifier.validate(leaf: cert, intermediates: CertificateStore(intermediates)) {
        case .validCertificate(let chain):
            return "verified by \(chain.last?.subject.description ?? cert.issuer.description)"
        case .couldNotValidate(let failures):
            // No candidate chain: name the roots it was held against; else why the chain failed.
            let names = authorities.filter(\.root).map(\.subject)
            let why = failures.first.map { ": " + Self.shorten("\($0.policyFailureReason)") }
                ?? " (roots: \(names.isEmpty ? "none, only intermediates" : names.prefix(5).joined(separator: "; ")))"
            throw APIError(403, "the EK certificate issued by \(cert.issuer) does not chain to a configured EK CA root\(why)")
        }
    }
}

extension EKCertificate {
    /// swift-certificates names a certificate in a failure by its whole description; the
    /// refusal is one line an operator reads, so each becomes `certificate "SUBJECT"`.
    static func shorten(_ reason: String) -> String {
        let pattern = #"Certificate\(version: [^,]*, serialNumber: [^,]*, issuer: "[^"]*", subject: "([^"]*)".*?\]\)"#
        guard let re = try? NSRegularExpression(pattern: pattern) else { return String(reason.prefix(300)) }
        let range = NSRange(reason.startIndex..., in: reason)
        let short = re.stringByReplacingMatches(in: reason, range: range, withTemplate: "\"$1\"")
        return String(short.prefix(300))
    }
}

/// What an EK certificate carries that a TLS policy would refuse: a critical subjectAltName
/// holding the TPM maker, model and version (a directoryName, the subject being often empty),
/// and the EKU tcg-kp-EKCertificate. The leaf must have SAN parseable and, when it has an
/// EKU, tcg-kp-EKCertificate in it.
struct EKCertificatePolicy: VerifierPolicy {
    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [
        .X509ExtensionID.subjectAlternativeName, .X509ExtensionID.extendedKeyUsage,
    ]

    mutating func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        guard let leaf = chain.first else { return .failsToMeetPolicy(reason: "an empty chain") }
        do {
            _ = try leaf.extensions.subjectAlternativeNames
            if let eku = try leaf.extensions.extendedKeyUsage {
                guard eku.contains(ExtendedKeyUsage.Usage(oid: EKCertificate.ekCertificateEKU)) else {
                    return .failsToMeetPolicy(reason: "its extended key usage lacks tcg-kp-EKCertificate (2.23.133.8.1)")
                }
            }
        } catch {
            return .failsToMeetPolicy(reason: "an extension does not parse: \(error)")
        }
        return .meetsPolicy
    }
}

extension AdminRoutes {
    /// `GET /attestation/ek-cas`.
    func ekAuthorities() async throws -> Any {
        try await fleet.store.ekCertificateAuthorities().map(Self.ekCAJSON)
    }

    /// `POST /attestation/ek-cas` {"pem": PEM}: adds every certificate in it.
    func addEKAuthorities(_ body: [String: Any]) async throws -> Any {
        guard let pem = body["pem"] as? String else { throw ControllerError.invalidInput("pem is missing") }
        let records = try EKCARecord.parse(pem: pem)
        for r in records { try await fleet.store.putEKCertificateAuthority(r) }
        return records.map(Self.ekCAJSON)
    }

    /// `POST /attestation/ek-cas/FINGERPRINT/remove`.
    func removeEKAuthority(_ fingerprint: String) async throws -> Any {
        let fp = fingerprint.lowercased().replacingOccurrences(of: ":", with: "")
        guard try await fleet.store.removeEKCertificateAuthority(fingerprint: fp) else {
            throw ControllerError.invalidInput("no EK CA with fingerprint \(fingerprint.prefix(80))")
        }
        return ["fingerprint": fp, "removed": true] as [String: Any]
    }

    static func ekCAJSON(_ r: EKCARecord) -> [String: Any] {
        ["fingerprint": r.fingerprint, "subject": r.subject, "kind": r.root ? "root" : "intermediate",
         "added": Views.iso(r.addedMs), "pem": r.pem]
    }
}
