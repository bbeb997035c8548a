// One TCP connection, optionally pinned to an interface and optionally
// wrapped in TLS, with every step bounded by a deadline. Non-blocking
// sockets and poll(2): a dead path costs at most the caller's timeout, and
// a probe of a backup port can run beside a download on the active one.
//
//   socket ─ SO_BINDTODEVICE? ─ connect ─ (CONNECT through proxy)? ─ TLS? ─ read/write

#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import OutpostPlatform

final class Connection {
    let fd: Int32
    /// What error messages call this connection ("https://host:port/path").
    let label: String
    private var ssl: OpaquePointer?

    private init(fd: Int32, label: String) {
        self.fd = fd
        self.label = label
    }

    deinit {
        if let ssl { SSL_free(ssl) }
        close(fd)
    }

    /// Resolves `host`, then tries each address until one connects.
    static func open(host: String, port: Int, device: String?, label: String,
                     until deadline: Deadline) throws(HTTPError) -> Connection {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else { throw .resolve(host: host, detail: String(cString: gai_strerror(rc))) }
        defer { freeaddrinfo(list) }
        var lastError = HTTPError.resolve(host: host, detail: "no address")
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cursor {
            cursor = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                            ai.pointee.ai_protocol)
            guard fd >= 0 else { lastError = .system(.current("socket", label)); continue }
            let connection = Connection(fd: fd, label: label)
            do {
                if let device {
                    let ok = device.withCString { setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, $0, socklen_t(strlen($0) + 1)) }
                    guard ok == 0 else { throw HTTPError.system(.current("setsockopt(SO_BINDTODEVICE \(device))", label)) }
                }
                // Not through systemCall: a connect interrupted by a signal goes
                // on asynchronously (retrying would give EALREADY), exactly like
                // EINPROGRESS on this non-blocking socket, so both wait for POLLOUT.
                if Glibc.connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) != 0 {
                    guard errno == EINPROGRESS || errno == EINTR else { throw HTTPError.system(.current("connect", label)) }
                    try connection.wait(for: Int16(POLLOUT), until: deadline, step: "connect")
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else {
                        throw HTTPError.system(.current("getsockopt(SO_ERROR)", label))
                    }
                    guard error == 0 else { throw HTTPError.system(SystemError(call: "connect", object: label, code: error)) }
                }
                return connection
            } catch {
                lastError = error as? HTTPError ?? lastError
                if case .timeout = lastError { throw lastError }
            }
        }
        throw lastError
    }

    // MARK: TLS

    /// Runs the TLS handshake and checks the server's certificate against
    /// `context`'s anchors and `host` (a name, or an IP literal in the SAN).
    func startTLS(_ context: TLSContext, host: String, until deadline: Deadline) throws(HTTPError) {
        guard let ssl = SSL_new(context.context) else { throw .tls(step: "setup", target: label, detail: TLSContext.lastError()) }
        self.ssl = ssl
        guard let bio = COpenSSL_socket_bio(fd) else { throw .tls(step: "setup", target: label, detail: "cannot allocate a BIO") }
        SSL_set_bio(ssl, bio, bio)
        if Self.isIPLiteral(host) {
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 else {
                throw .tls(step: "setup", target: label, detail: "cannot verify against address \(host)")
            }
        } else {
            guard SSL_set1_host(ssl, host) == 1, COpenSSL_set_sni(ssl, host) == 1 else {
                throw .tls(step: "setup", target: label, detail: "cannot verify against name \(host)")
            }
        }
        while true {
            ERR_clear_error()
            let rc = SSL_connect(ssl)
            if rc == 1 { return }
            let code = SSL_get_error(ssl, rc)
            switch code {
            case SSL_ERROR_WANT_READ: try wait(for: Int16(POLLIN), until: deadline, step: "TLS handshake")
            case SSL_ERROR_WANT_WRITE: try wait(for: Int16(POLLOUT), until: deadline, step: "TLS handshake")
            default:
                let verify = SSL_get_verify_result(ssl)
                if verify != X509_V_OK {
                    throw .tls(step: "handshake", target: label,
                               detail: "certificate not trusted: \(String(cString: X509_verify_cert_error_string(verify)))")
                }
                let detail = TLSContext.lastError()
                throw .tls(step: "handshake", target: label, detail: detail.isEmpty ? "\(Self.describe(code)): \(Errno(rawValue: errno)) (errno \(errno))" : detail)
            }
        }
    }

    static func isIPLiteral(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    static func describe(_ sslError: Int32) -> String {
        switch sslError {
        case SSL_ERROR_ZERO_RETURN: return "the server closed the TLS session"
        case SSL_ERROR_SYSCALL: return "the connection failed under TLS"
        case SSL_ERROR_SSL: return "protocol error"
        default: return "SSL error \(sslError)"
        }
    }

    // MARK: I/O

    func writeAll(_ bytes: [UInt8], until deadline: Deadline) throws(HTTPError) {
        var done = 0
        while done < bytes.count {
            let n = try bytes.withTypedBytes { (raw) throws(HTTPError) -> Int in
                try write(UnsafeRawBufferPointer(rebasing: raw[done...]), until: deadline)
            }
            done += n
        }
    }

    /// Writes some of `bytes`; waits while the socket is full.
    private func write(_ bytes: UnsafeRawBufferPointer, until deadline: Deadline) throws(HTTPError) -> Int {
        while true {
            if let ssl {
                ERR_clear_error()
                let n = SSL_write(ssl, bytes.baseAddress, Int32(min(bytes.count, Int(Int32.max))))
                if n > 0 { return Int(n) }
                try waitForTLS(ssl, n, until: deadline, step: "send")
            } else {
                let sent: Result<Int, SystemError>
                do throws(SystemError) {
                    sent = try systemCall("send", label, expecting: [.wouldBlock]) {
                        send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
                    }
                } catch { throw .system(error) }
                // A stream socket never takes zero bytes of a non-empty send; treat it as full.
                if case .success(let n) = sent, n > 0 { return n }
                try wait(for: Int16(POLLOUT), until: deadline, step: "send")
            }
        }
    }

    /// Reads what is available (waiting for at least one byte); 0 at the end of the stream.
    func read(into buffer: UnsafeMutableRawBufferPointer, until deadline: Deadline) throws(HTTPError) -> Int {
        while true {
            if let ssl {
                ERR_clear_error()
                let n = SSL_read(ssl, buffer.baseAddress, Int32(min(buffer.count, Int(Int32.max))))
                if n > 0 { return Int(n) }
                let code = SSL_get_error(ssl, n)
                if code == SSL_ERROR_ZERO_RETURN { return 0 }
                // With SSL_OP_IGNORE_UNEXPECTED_EOF a bare TCP close is a clean end.
                if code == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && (n == 0 || errno == ECONNRESET) { return 0 }
                try waitForTLS(ssl, n, until: deadline, step: "receive")
            } else {
                let received: Result<Int, SystemError>
                do throws(SystemError) {
                    received = try systemCall("recv", label, expecting: [.wouldBlock, .connectionReset]) {
                        recv(fd, buffer.baseAddress, buffer.count, 0)
                    }
                } catch { throw .system(error) }
                switch received {
                case .success(let n): return n
                case .failure(let error) where error.errno == .connectionReset: return 0
                case .failure: try wait(for: Int16(POLLIN), until: deadline, step: "receive")
                }
            }
        }
    }

    private func waitForTLS(_ ssl: OpaquePointer, _ rc: Int32, until deadline: Deadline, step: String) throws(HTTPError) {
        let code = SSL_get_error(ssl, rc)
        switch code {
        case SSL_ERROR_WANT_READ: try wait(for: Int16(POLLIN), until: deadline, step: step)
        case SSL_ERROR_WANT_WRITE: try wait(for: Int16(POLLOUT), until: deadline, step: step)
        default:
            let detail = TLSContext.lastError()
            throw .tls(step: step, target: label, detail: detail.isEmpty ? Self.describe(code) : detail)
        }
    }

    func wait(for events: Int16, until deadline: Deadline, step: String) throws(HTTPError) {
        let left = deadline.remaining
        guard left > .zero else { throw .timeout(step: step, target: label) }
        var entries = [pollfd(fd: fd, events: events, revents: 0)]
        let ready: Int
        do throws(SystemError) { ready = try pollDescriptors(&entries, timeout: left, object: label) } catch { throw .system(error) }
        guard ready > 0 else { throw .timeout(step: step, target: label) }
    }
}
