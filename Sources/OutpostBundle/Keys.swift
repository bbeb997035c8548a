import Crypto
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// Keys and trust anchors. A key is named by its key ID, the first 8 bytes
// (16 hex digits) of SHA-256 over its SubjectPublicKeyInfo DER, so
// `openssl pkey -pubin -outform DER | sha256sum` gives the same name.

/// The short, stable name of a public key.
public struct KeyID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// Parses 16 hex digits.
    public init?(hex s: String) {
        guard s.utf8.count == 16, let b = OutpostBundle.bytes(fromHex: s) else { return nil }
        bytes = b
    }

    public init(publicKey: P256.Signing.PublicKey) {
        bytes = Array(SHA256.hash(data: publicKey.derRepresentation).prefix(8))
    }

    public var description: String { hex(bytes) }
    public static func < (a: KeyID, b: KeyID) -> Bool { a.description < b.description }
}

/// A private signing key (build host only), with its PEM forms.
public struct SigningKey {
    public let key: P256.Signing.PrivateKey
    public var keyID: KeyID { KeyID(publicKey: key.publicKey) }
    public var privatePEM: String { key.pemRepresentation }
    public var publicPEM: String { key.publicKey.pemRepresentation }

    public init(key: P256.Signing.PrivateKey) { self.key = key }

    /// A fresh key from the system's CSPRNG.
    public static func generate() -> SigningKey { SigningKey(key: P256.Signing.PrivateKey()) }

    /// Reads a PKCS#8 or SEC1 PEM private key.
    public static func load(path: String) throws(BundleError) -> SigningKey {
        let text = try readText(path: path, what: .key)
        do { return SigningKey(key: try P256.Signing.PrivateKey(pemRepresentation: text)) } catch {
            throw .key(path: path, reason: "not a P-256 private key in PEM (\(error))")
        }
    }

    /// Signs the header and manifest bytes; DER, so openssl can check it.
    public func sign(_ signed: [UInt8]) throws(BundleError) -> SignatureRecord {
        do {
            let sig = try key.signature(for: signed)
            return SignatureRecord(keyID: keyID, der: Array(sig.derRepresentation))
        } catch {
            throw .key(path: keyID.description, reason: "signing failed: \(error)")
        }
    }
}

/// The public keys a device (or `outpost bundle verify`) accepts, minus the
/// revoked ones. Several anchors let a key be rotated: sign with old and new
/// during the transition, then revoke the old one.
public struct TrustStore {
    public private(set) var anchors: [KeyID: P256.Signing.PublicKey]
    public private(set) var revoked: Set<KeyID>

    /// The file in a trust directory that lists revoked key IDs.
    public static let revocationFileName = "revoked.txt"

    public init(anchors: [P256.Signing.PublicKey], revoked: Set<KeyID> = []) {
        var map: [KeyID: P256.Signing.PublicKey] = [:]
        for a in anchors { map[KeyID(publicKey: a)] = a }
        self.anchors = map
        self.revoked = revoked
    }

    /// Loads every `*.pem` file holding a PUBLIC KEY (private keys in the same
    /// directory, like out/keys, are skipped) and the optional `revoked.txt`:
    /// one 16-hex key ID per line, `#` comments. A malformed anchor or list
    /// line is an error: a trust store must never be silently smaller.
    public static func load(directory: String) throws(BundleError) -> TrustStore {
        guard FileManager.default.fileExists(atPath: directory) else {
            throw .trustStore(path: directory, reason: "no such directory")
        }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted() } catch {
            throw .trustStore(path: directory, reason: "cannot list the directory (\(error))")
        }
        var keys: [P256.Signing.PublicKey] = []
        for name in names where name.hasSuffix(".pem") {
            let path = directory + "/" + name
            let text = try readText(path: path, what: .trust)
            if text.contains("PRIVATE KEY-----") { continue }
            do { keys.append(try P256.Signing.PublicKey(pemRepresentation: text)) } catch {
                throw .trustStore(path: path, reason: "not a P-256 public key in PEM (\(error))")
            }
        }
        guard !keys.isEmpty else { throw .trustStore(path: directory, reason: "no public keys (*.pem)") }
        var revoked: Set<KeyID> = []
        let listPath = directory + "/" + revocationFileName
        if FileManager.default.fileExists(atPath: listPath) {
            revoked = try parseRevocations(try readText(path: listPath, what: .trust), path: listPath)
        }
        return TrustStore(anchors: keys, revoked: revoked)
    }

    /// Parses a revocation list; `path` only names it in errors.
    public static func parseRevocations(_ text: String, path: String) throws(BundleError) -> Set<KeyID> {
        var out: Set<KeyID> = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let trimmed = String(line.drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" })
                .reversed().drop(while: { $0 == " " || $0 == "\t" || $0 == "\r" }).reversed())
            if trimmed.isEmpty { continue }
            guard let id = KeyID(hex: trimmed.lowercased()) else {
                throw .trustStore(path: path, reason: "line \(n + 1): '\(trimmed)' is not a 16-hex-digit key ID")
            }
            out.insert(id)
        }
        return out
    }
}

enum TextKind { case key, trust }

/// Reads a small text file (a PEM or a list), naming the path on failure.
func readText(path: String, what: TextKind) throws(BundleError) -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        switch what {
        case .key: throw .key(path: path, reason: "cannot read the file")
        case .trust: throw .trustStore(path: path, reason: "cannot read the file")
        }
    }
    return String(decoding: data, as: UTF8.self)
}

extension KeyID {
    /// The key ID of a PEM public key file.
    public init(publicKeyFile path: String) throws(BundleError) {
        let text = try readText(path: path, what: .key)
        do { self.init(publicKey: try P256.Signing.PublicKey(pemRepresentation: text)) } catch {
            throw .key(path: path, reason: "not a P-256 public key in PEM (\(error))")
        }
    }
}

/// SHA-256 for callers that do not import Crypto themselves (the CLI).
public struct PayloadHasher {
    private var h = SHA256()
    public init() {}
    public mutating func update(_ bytes: [UInt8]) { h.update(data: bytes) }
    public var hexDigest: String { hex(Array(h.finalize())) }
}
