// The device's own identity: a P-256 key it made itself and a certificate for
// it. Callers see only this protocol, so a TPM-backed identity can replace the
// software one without touching registration or the transport.
//
//   PERSIST/fleet/device.key.pem    private key, mode 0600, written atomically
//   PERSIST/fleet/device.cert.pem   self-signed certificate, CN = serial
//   PERSIST/fleet/serial            the serial, when CONFIG gives none
//
// The certificate never changes once made: the controller knows the device by
// its fingerprint, and a new certificate means a new device.

#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import OutpostHTTP
import OutpostProto
import OutpostPlatform

/// What the client needs from an identity: the certificate to register and
/// the TLS material to speak with it. A TPM implementation keeps its key in
/// the chip and hands out a context configured through its provider.
public protocol DeviceIdentity: Sendable {
    /// The serial number the controller's onboarding allow-list matches.
    var serial: String { get }
    /// The device certificate, PEM; sent once in RegisterRequest.
    var certificatePEM: String { get }
    /// A TLS context that trusts `caFiles` and presents the device certificate.
    func tlsContext(trusting caFiles: [String]) throws(FleetError) -> TLSContext
    /// An ECDSA-P256-SHA256 signature over `message` (DER), for attestation
    /// and signed requests later on.
    func sign(_ message: [UInt8]) throws(FleetError) -> [UInt8]
    /// TPM or file, as DeviceInfo reports it (default: file).
    var kind: Outpost_Api_V1_IdentityKind { get }
}

/// The identity with its key in a file on PERSIST: made on first use, loaded
/// on every later boot.
public struct SoftwareIdentity: DeviceIdentity {
    public let serial: String
    public let certificatePEM: String
    let privateKeyPEM: String

    public static let keyFile = "device.key.pem"
    public static let certificateFile = "device.cert.pem"
    public static let serialFile = "serial"

    /// Loads the identity from `directory`, making the missing parts: a serial
    /// (the given one, else the stored one, else a random one that is then
    /// stored), a key and a certificate.
    public static func loadOrCreate(directory: String, serial configured: String?) throws(FleetError) -> SoftwareIdentity {
        try FleetFiles.makeDirectory(directory)
        let serial = try resolveSerial(directory: directory, configured: configured)
        let keyPath = directory + "/" + keyFile
        let certPath = directory + "/" + certificateFile
        let keyPEM: String
        if let stored = try FleetFiles.readText(keyPath) {
            keyPEM = stored
        } else {
            keyPEM = try OpenSSLKey.generateP256PEM()
            try FleetFiles.write(Array(keyPEM.utf8), to: keyPath, mode: 0o600)
        }
        let certPEM: String
        if let stored = try FleetFiles.readText(certPath) {
            certPEM = stored
        } else {
            certPEM = try OpenSSLKey.selfSignedCertificatePEM(keyPEM: keyPEM, commonName: serial)
            try FleetFiles.write(Array(certPEM.utf8), to: certPath, mode: 0o644)
        }
        // Refuse a key and certificate that do not belong together now, not
        // at every handshake.
        _ = try OpenSSLKey.context(caFiles: [], certificatePEM: certPEM, keyPEM: keyPEM, label: certPath, anchorsRequired: false)
        return SoftwareIdentity(serial: serial, certificatePEM: certPEM, privateKeyPEM: keyPEM)
    }

    /// Shared with the TPM identity: one rule for serials whatever holds the key.
    package static func resolveSerial(directory: String, configured: String?) throws(FleetError) -> String {
        if let configured {
            let trimmed = configured.trimmingWhitespace
            guard !trimmed.isEmpty, trimmed.count <= 64, trimmed.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.:".contains($0)) }) else {
                throw .configuration(item: "serial", reason: "'\(trimmed.prefix(64))' is not 1–64 letters, digits or -_.:")
            }
            return trimmed
        }
        let path = directory + "/" + serialFile
        if let stored = try FleetFiles.readText(path)?.trimmingWhitespace, !stored.isEmpty { return stored }
        // SystemRandomNumberGenerator reads getrandom(2): the kernel's CSPRNG.
        let random = (0..<6).map { _ in UInt8.random(in: 0...255) }
        let serial = "OP-" + random.map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            return hex.count == 1 ? "0" + hex : hex
        }.joined()
        try FleetFiles.write(Array((serial + "\n").utf8), to: path, mode: 0o644)
        return serial
    }

    public func tlsContext(trusting caFiles: [String]) throws(FleetError) -> TLSContext {
        try OpenSSLKey.context(caFiles: caFiles, certificatePEM: certificatePEM, keyPEM: privateKeyPEM, label: "device certificate")
    }

    public func sign(_ message: [UInt8]) throws(FleetError) -> [UInt8] {
        try OpenSSLKey.sign(message, keyPEM: privateKeyPEM)
    }
}

/// The few OpenSSL key and certificate operations identities need.
package enum OpenSSLKey {
    package static func lastError() -> String {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return "unknown OpenSSL error" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A TLS context presenting `certificatePEM`; `anchorsRequired: false`
    /// only checks that the pair loads and matches.
    static func context(caFiles: [String], certificatePEM: String, keyPEM: String, label: String,
                        anchorsRequired: Bool = true) throws(FleetError) -> TLSContext {
        let client = TLSClientCertificate(certificatePEM: certificatePEM, privateKeyPEM: keyPEM, label: label)
        do {
            return try TLSContext(caFiles: caFiles, systemDefaults: !anchorsRequired && caFiles.isEmpty, client: client)
        } catch {
            throw .identity(step: "TLS material", detail: error.description)
        }
    }

    static func generateP256PEM() throws(FleetError) -> String {
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { throw .identity(step: "key generation", detail: lastError()) }
        defer { EVP_PKEY_CTX_free(ctx) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(ctx) == 1, EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1,
              EVP_PKEY_generate(ctx, &key) == 1, let key else {
            throw .identity(step: "key generation", detail: lastError())
        }
        defer { EVP_PKEY_free(key) }
        return try pem("private key") { bio in PEM_write_bio_PrivateKey(bio, key, nil, nil, 0, nil, nil) }
    }

    static func readKey(_ pem: String) throws(FleetError) -> OpaquePointer {
        let bytes = Array(pem.utf8)
        let key: OpaquePointer? = bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let key else { throw .identity(step: "reading the private key", detail: lastError()) }
        return key
    }

    /// A v3 certificate for `keyPEM`, issued by itself, with a random serial
    /// and no expiry (RFC 5280's 99991231235959Z): a device in a drawer for
    /// years must still be able to enrol.
    static func selfSignedCertificatePEM(keyPEM: String, commonName: String) throws(FleetError) -> String {
        let key = try readKey(keyPEM)
        defer { EVP_PKEY_free(key) }
        return try selfSignedCertificatePEM(key: key, commonName: commonName)
    }

    /// The same certificate for any EVP_PKEY, also one whose signing happens
    /// in a TPM: the TPM identity follows the same subject and validity rules.
    package static func selfSignedCertificatePEM(key: OpaquePointer, commonName: String) throws(FleetError) -> String {
        guard let cert = X509_new() else { throw .identity(step: "certificate", detail: lastError()) }
        defer { X509_free(cert) }
        var random = (0..<16).map { _ in UInt8.random(in: 0...255) }
        random[0] &= 0x7f  // a positive INTEGER
        guard let number = BN_bin2bn(random, Int32(random.count), nil) else { throw .identity(step: "certificate serial", detail: lastError()) }
        defer { BN_free(number) }
        guard X509_set_version(cert, 2) == 1,
              BN_to_ASN1_INTEGER(number, X509_get_serialNumber(cert)) != nil,
              X509_gmtime_adj(X509_getm_notBefore(cert), -3600) != nil,
              ASN1_TIME_set_string(X509_getm_notAfter(cert), "99991231235959Z") == 1,
              X509_set_pubkey(cert, key) == 1,
              let name = X509_get_subject_name(cert),
              X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, "Outpost device", -1, -1, 0) == 1,
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, commonName, -1, -1, 0) == 1,
              X509_set_issuer_name(cert, name) == 1,
              X509_sign(cert, key, EVP_sha256()) > 0 else {
            throw .identity(step: "certificate", detail: lastError())
        }
        return try pem("certificate") { bio in PEM_write_bio_X509(bio, cert) }
    }

    static func sign(_ message: [UInt8], keyPEM: String) throws(FleetError) -> [UInt8] {
        let key = try readKey(keyPEM)
        defer { EVP_PKEY_free(key) }
        guard let md = EVP_MD_CTX_new() else { throw .identity(step: "sign", detail: lastError()) }
        defer { EVP_MD_CTX_free(md) }
        guard EVP_DigestSignInit(md, nil, EVP_sha256(), nil, key) == 1 else { throw .identity(step: "sign", detail: lastError()) }
        var length = 0
        guard EVP_DigestSign(md, nil, &length, message, message.count) == 1 else { throw .identity(step: "sign", detail: lastError()) }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSign(md, &signature, &length, message, message.count) == 1 else { throw .identity(step: "sign", detail: lastError()) }
        return Array(signature.prefix(length))
    }

    /// Runs `write` into a memory BIO and returns what it wrote as text.
    package static func pem(_ what: String, _ write: (OpaquePointer) -> Int32) throws(FleetError) -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw .identity(step: what, detail: lastError()) }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else { throw .identity(step: "writing the \(what)", detail: lastError()) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = BIO_read(bio, &chunk, Int32(chunk.count))
            if n <= 0 { break }
            out += chunk[..<Int(n)]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
