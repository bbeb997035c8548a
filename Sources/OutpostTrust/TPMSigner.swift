// The bridge OpenSSL signs through: a C callback that finds this object
// through the EC_KEY's ex_data and asks the TPM for (r, s).

#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CTSS2
import OutpostHTTP
import Synchronization

/// Signs digests with the device key in the TPM, and remembers the last
/// failure: OpenSSL's callback can only say "failed", so the identity reports
/// the TPM's own line instead.
final class TPMSigner: Sendable {
    let connection: TPMConnection
    let parent: ESYS_TR
    let blobs: KeyBlobs
    let path: String
    private let failure = Mutex<TPMError?>(nil)

    init(connection: TPMConnection, parent: ESYS_TR, blobs: KeyBlobs, path: String) {
        self.connection = connection
        self.parent = parent
        self.blobs = blobs
        self.path = path
    }

    func sign(digest: [UInt8]) throws(TPMError) -> (r: [UInt8], s: [UInt8]) {
        do {
            let result = try connection.sign(digest: digest, parent: parent, blobs, path: path)
            failure.withLock { $0 = nil }
            return result
        } catch {
            failure.withLock { $0 = error }
            throw error
        }
    }

    /// The TPM failure behind the last failed signature, if any.
    func lastFailure() -> TPMError? { failure.withLock { $0 } }

    /// An EVP_PKEY for the device key whose signatures come from the TPM. Each
    /// holds a reference to this signer until OpenSSL frees it.
    func openSSLKey() throws(TPMError) -> TLSPrivateKey {
        let context = Unmanaged.passRetained(self).toOpaque()
        let key = COpenSSL_delegated_ec_key(blobs.x, blobs.y, { context, digest, length, r, s in
            guard let context, let digest, let r, let s else { return 0 }
            let signer = Unmanaged<TPMSigner>.fromOpaque(context).takeUnretainedValue()
            // ECDSA uses the leftmost 256 bits of a longer digest (SHA-384 in
            // a TLS 1.2 handshake), which is exactly what the TPM signs as a
            // SHA-256 digest. A shorter digest cannot be signed this way.
            guard length >= 32 else { return 0 }
            let bytes = Array(UnsafeBufferPointer(start: digest, count: 32))
            guard let (sigR, sigS) = try? signer.sign(digest: bytes) else { return 0 }
            r.update(from: sigR, count: 32)
            s.update(from: sigS, count: 32)
            return 1
        }, { context in
            guard let context else { return }
            Unmanaged<TPMSigner>.fromOpaque(context).release()
        }, context)
        guard let key else { throw .unusable(step: "OpenSSL key for the TPM key", reason: OpenSSLError.last()) }
        return TLSPrivateKey(taking: key)
    }

    /// (r, s) as a DER ECDSA-Sig-Value, the form `openssl dgst -verify` reads.
    static func der(r: [UInt8], s: [UInt8]) throws(TPMError) -> [UInt8] {
        guard let sig = ECDSA_SIG_new() else { throw .unusable(step: "signature", reason: OpenSSLError.last()) }
        defer { ECDSA_SIG_free(sig) }
        guard let br = BN_bin2bn(r, Int32(r.count), nil) else { throw .unusable(step: "signature", reason: OpenSSLError.last()) }
        guard let bs = BN_bin2bn(s, Int32(s.count), nil) else {
            BN_free(br)
            throw .unusable(step: "signature", reason: OpenSSLError.last())
        }
        guard ECDSA_SIG_set0(sig, br, bs) == 1 else {
            BN_free(br); BN_free(bs)
            throw .unusable(step: "signature", reason: OpenSSLError.last())
        }
        let length = i2d_ECDSA_SIG(sig, nil)
        guard length > 0 else { throw .unusable(step: "signature", reason: OpenSSLError.last()) }
        var out = [UInt8](repeating: 0, count: Int(length))
        let written = out.withUnsafeMutableBufferPointer { buffer -> Int32 in
            var p = buffer.baseAddress
            return i2d_ECDSA_SIG(sig, &p)
        }
        guard written == length else { throw .unusable(step: "signature", reason: OpenSSLError.last()) }
        return out
    }
}

enum OpenSSLError {
    /// The oldest queued OpenSSL error as text, and the queue cleared.
    static func last() -> String {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return "unknown OpenSSL error" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
