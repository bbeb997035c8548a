// Client certificates for mutual TLS: the device proves who it is to its
// controller with a certificate and key it holds (the batch's onboarding
// certificate for registration, its own device certificate afterwards).
//
// Kept apart from TLSContext.swift: the context is still built once and never
// changed afterwards; this only adds the key material at construction.

#if canImport(Glibc)
import Glibc
#endif
import COpenSSL

/// A PEM certificate and the PEM private key that belongs to it, as presented
/// to a server that asks for one. Only the first certificate is sent: device
/// and onboarding certificates are issued directly by the controller's CA or
/// self-signed, so there is no chain to send.
public struct TLSClientCertificate: Sendable {
    public var certificatePEM: String
    public var privateKeyPEM: String
    /// Names the credential in errors ("onboarding certificate", a path...).
    public var label: String

    public init(certificatePEM: String, privateKeyPEM: String, label: String) {
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
        self.label = label
    }
}

extension TLSContext {
    /// A context that verifies the server against `caFiles` (and the system
    /// store when asked) and presents `client` when the server asks for a
    /// certificate. A key that does not match the certificate is refused here,
    /// not at the first handshake.
    public convenience init(caFiles: [String], systemDefaults: Bool, client: TLSClientCertificate) throws(HTTPError) {
        try self.init(caFiles: caFiles, systemDefaults: systemDefaults)
        try Self.install(client, into: context)
    }

    static func install(_ client: TLSClientCertificate, into ctx: OpaquePointer) throws(HTTPError) {
        ERR_clear_error()
        let certificates = try readCertificates(client.certificatePEM, label: client.label)
        defer { for c in certificates { X509_free(c) } }
        guard SSL_CTX_use_certificate(ctx, certificates[0]) == 1 else {
            throw .tls(step: "setup", target: client.label, detail: "certificate refused: \(lastError())")
        }
        let key = try readPrivateKey(client.privateKeyPEM, label: client.label)
        defer { EVP_PKEY_free(key) }
        guard SSL_CTX_use_PrivateKey(ctx, key) == 1 else {
            throw .tls(step: "setup", target: client.label, detail: "private key refused: \(lastError())")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw .tls(step: "setup", target: client.label, detail: "private key does not match the certificate")
        }
    }

    /// Every certificate in `pem`, leaf first; at least one.
    static func readCertificates(_ pem: String, label: String) throws(HTTPError) -> [OpaquePointer] {
        let bytes = Array(pem.utf8)
        var result: [OpaquePointer] = []
        bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return }
            defer { BIO_free(bio) }
            while let cert = PEM_read_bio_X509(bio, nil, nil, nil) { result.append(cert) }
        }
        ERR_clear_error()  // the loop ends on a "no start line" error by design
        guard !result.isEmpty else { throw .tls(step: "setup", target: label, detail: "no PEM certificate found") }
        return result
    }

    static func readPrivateKey(_ pem: String, label: String) throws(HTTPError) -> OpaquePointer {
        let bytes = Array(pem.utf8)
        let key: OpaquePointer? = bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let key else { throw .tls(step: "setup", target: label, detail: "no PEM private key found: \(lastError())") }
        return key
    }
}

/// A private key held as an OpenSSL key object rather than PEM, for keys whose
/// private half never exists in memory (a TPM key whose signing OpenSSL
/// delegates through COpenSSL_delegated_ec_key).
// @unchecked: the EVP_PKEY is only read after init (SSL_CTX_use_PrivateKey
// takes its own reference); OpenSSL allows that from any thread.
public final class TLSPrivateKey: @unchecked Sendable {
    /// The EVP_PKEY; owned by this object.
    public let key: OpaquePointer

    /// Takes ownership of `key` (one reference).
    public init(taking key: OpaquePointer) { self.key = key }

    deinit { EVP_PKEY_free(key) }
}

extension TLSContext {
    /// Like `init(caFiles:systemDefaults:client:)`, with the key as an
    /// OpenSSL key object: the certificate must be for that key.
    public convenience init(caFiles: [String], systemDefaults: Bool, certificatePEM: String, key: TLSPrivateKey,
                            label: String) throws(HTTPError) {
        try self.init(caFiles: caFiles, systemDefaults: systemDefaults)
        ERR_clear_error()
        let certificates = try Self.readCertificates(certificatePEM, label: label)
        defer { for c in certificates { X509_free(c) } }
        guard SSL_CTX_use_certificate(context, certificates[0]) == 1 else {
            throw .tls(step: "setup", target: label, detail: "certificate refused: \(Self.lastError())")
        }
        guard SSL_CTX_use_PrivateKey(context, key.key) == 1 else {
            throw .tls(step: "setup", target: label, detail: "private key refused: \(Self.lastError())")
        }
        guard SSL_CTX_check_private_key(context) == 1 else {
            throw .tls(step: "setup", target: label, detail: "private key does not match the certificate")
        }
    }
}
