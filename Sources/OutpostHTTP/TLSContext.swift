// The trust a TLS client starts from. Built once and shared: loading a CA
// bundle costs milliseconds, a probe runs ten times a second.
//
// Anchors: the files given (a device's controller CA from CONFIG, say) and,
// when asked, the system's default store. Servers must prove their name or
// address; TLS 1.2 is the floor.

#if canImport(Glibc)
import Glibc
#endif
import COpenSSL

// @unchecked: the SSL_CTX is an OpaquePointer, which Swift cannot prove
// Sendable. OpenSSL documents an SSL_CTX as safe to share between threads
// for SSL_new once configured, and this one is never changed after init.
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer

    public init(caFiles: [String], systemDefaults: Bool) throws(HTTPError) {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw .tls(step: "setup", target: "TLS context", detail: Self.lastError())
        }
        context = ctx
        guard COpenSSL_require_tls12(ctx) == 1 else { throw .tls(step: "setup", target: "TLS context", detail: Self.lastError()) }
        COpenSSL_ignore_unexpected_eof(ctx)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        for file in caFiles {
            guard SSL_CTX_load_verify_locations(ctx, file, nil) == 1 else {
                throw .tls(step: "setup", target: file, detail: "cannot load CA certificates: \(Self.lastError())")
            }
        }
        if systemDefaults { _ = SSL_CTX_set_default_verify_paths(ctx) }
        if caFiles.isEmpty && !systemDefaults {
            throw .tls(step: "setup", target: "TLS context", detail: "no trust anchors given")
        }
    }

    deinit { SSL_CTX_free(context) }

    /// The oldest queued OpenSSL error as text, and the queue cleared.
    static func lastError() -> String {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return "" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
