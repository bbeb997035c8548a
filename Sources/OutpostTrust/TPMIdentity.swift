// The device identity with its key in the TPM. Same protocol, serial rules and
// certificate rules as SoftwareIdentity; only where the key lives differs.
//
//   PERSIST/fleet/tpm-key.pub            TPM2B_PUBLIC of the device key
//   PERSIST/fleet/tpm-key.priv           TPM2B_PRIVATE: wrapped by the storage
//                                        root key, useless to any other TPM (0600)
//   PERSIST/fleet/tpm-device.cert.pem    self-signed certificate, CN = serial,
//                                        signed by the TPM key
//   PERSIST/fleet/serial                 the serial, when CONFIG gives none
//
// OpenSSL signs with the key through a legacy EC_KEY whose ECDSA method calls
// back into Swift (COpenSSL_delegated_ec_key), so TLS handshakes and the
// certificate are signed inside the TPM while hashing stays in OpenSSL.

#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CTSS2
import OutpostFleet
import OutpostProto
import OutpostHTTP

/// A device identity whose P-256 key was generated in the TPM and never leaves it.
public struct TPMIdentity: OutpostFleet.DeviceIdentity {
    public let serial: String
    public let certificatePEM: String
    let signer: TPMSigner

    public static let publicFile = "tpm-key.pub"
    public static let privateFile = "tpm-key.priv"
    public static let certificateFile = "tpm-device.cert.pem"

    /// The TCTI of the kernel's resource manager, which lets several users
    /// share the TPM and flushes what a crashed one left loaded.
    public static let deviceTCTI = "device:/dev/tpmrm0"

    /// Whether `directory` holds a TPM key: once it does, the device is known
    /// by it and must not quietly become another device.
    public static func hasKey(directory: String) -> Bool {
        access(directory + "/" + publicFile, F_OK) == 0 || access(directory + "/" + privateFile, F_OK) == 0
    }

    /// Loads the identity from `directory` through `tcti`, making what is
    /// missing: the storage root key (persistent at 0x81000001), the device
    /// key under it, and its certificate. Any TPM failure is thrown, naming
    /// the step; nothing falls back to a software key here.
    public static func loadOrCreate(directory: String, serial configured: String?,
                                    tcti: String = deviceTCTI) throws(TPMError) -> TPMIdentity {
        let serial: String
        do {
            try FleetFiles.makeDirectory(directory)
            serial = try SoftwareIdentity.resolveSerial(directory: directory, configured: configured)
        } catch {
            throw .unusable(step: "identity directory", reason: error.description)
        }
        let connection = try TPMConnection(tcti: tcti)
        let srk = try connection.storageRootKey()
        let pubPath = directory + "/" + publicFile
        let privPath = directory + "/" + privateFile
        let blobs: KeyBlobs
        switch (try readFile(pubPath), try readFile(privPath)) {
        case let (pub?, priv?):
            blobs = try KeyBlobs(publicBytes: pub, privateBytes: priv, path: privPath)
            try connection.checkLoads(parent: srk, blobs, path: privPath)
        case (nil, nil):
            blobs = try connection.createSigningKey(parent: srk)
            // The private blob first: a public blob alone is an unusable half.
            try writeFile(blobs.privateBytes, to: privPath, mode: 0o600)
            try writeFile(blobs.publicBytes, to: pubPath, mode: 0o600)
        case (nil, _), (_, nil):
            throw .unusable(step: "device key", reason: "only one of \(publicFile) and \(privateFile) is in \(directory)")
        }
        let signer = TPMSigner(connection: connection, parent: srk, blobs: blobs, path: privPath)
        let certPath = directory + "/" + certificateFile
        let certPEM: String
        if let stored = try readFile(certPath) {
            certPEM = String(decoding: stored, as: UTF8.self)
        } else {
            let key = try signer.openSSLKey()
            do {
                certPEM = try OpenSSLKey.selfSignedCertificatePEM(key: key.key, commonName: serial)
            } catch {
                throw signer.lastFailure() ?? .unusable(step: "device certificate", reason: error.description)
            }
            try writeFile(Array(certPEM.utf8), to: certPath, mode: 0o644)
        }
        let identity = TPMIdentity(serial: serial, certificatePEM: certPEM, signer: signer)
        // A certificate for another key (a TPM cleared and re-keyed, a file
        // copied from elsewhere) is refused now, not at every handshake.
        do {
            _ = try identity.context(caFiles: [], anchorsRequired: false, label: certPath)
        } catch {
            throw .unusable(step: "device certificate", reason: error.description)
        }
        return identity
    }

    public func tlsContext(trusting caFiles: [String]) throws(FleetError) -> TLSContext {
        try context(caFiles: caFiles, anchorsRequired: true, label: "TPM device certificate")
    }

    func context(caFiles: [String], anchorsRequired: Bool, label: String) throws(FleetError) -> TLSContext {
        let key: TLSPrivateKey
        do { key = try signer.openSSLKey() } catch { throw .identity(step: "TPM key", detail: error.description) }
        do {
            return try TLSContext(caFiles: caFiles, systemDefaults: !anchorsRequired && caFiles.isEmpty,
                                  certificatePEM: certificatePEM, key: key, label: label)
        } catch {
            throw .identity(step: "TLS material", detail: error.description)
        }
    }

    public var kind: Outpost_Api_V1_IdentityKind { .tpm }

    /// SHA-256 in OpenSSL, ECDSA in the TPM, DER like OpenSSL's own signatures.
    public func sign(_ message: [UInt8]) throws(FleetError) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        guard SHA256(message, message.count, &digest) != nil else {
            throw .identity(step: "sign", detail: OpenSSLKey.lastError())
        }
        do {
            let (r, s) = try signer.sign(digest: digest)
            return try TPMSigner.der(r: r, s: s)
        } catch {
            throw .identity(step: "sign", detail: error.description)
        }
    }

    static func readFile(_ path: String) throws(TPMError) -> [UInt8]? {
        do { return try FleetFiles.read(path) } catch { throw .unusable(step: "reading \(path)", reason: error.description) }
    }

    static func writeFile(_ bytes: [UInt8], to path: String, mode: mode_t) throws(TPMError) {
        do { try FleetFiles.write(bytes, to: path, mode: mode) } catch {
            throw .unusable(step: "writing \(path)", reason: error.description)
        }
    }
}
