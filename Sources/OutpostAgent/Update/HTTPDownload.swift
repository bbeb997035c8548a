// Downloads an update bundle over HTTP into PERSIST, resuming an interrupted
// transfer with a Range request instead of starting over: a device on a
// metered cellular link must not pay twice for the same bytes.
//
//   GET /path  Range: bytes=<have>-      (only when a partial file exists)
//   206 + Content-Range: bytes <have>-<end>/<total>  → append
//   200                                              → the server ignored
//                                                      Range: start over
//
// Plain HTTP only for now: the bundle is signed, so transport integrity is
// not what protects the device; HTTPS (for privacy and proxies) comes with
// the controller client.

#if canImport(Glibc)
import Glibc
#endif

/// Why a download failed, with the URL or the step that failed.
public enum DownloadError: Error, Equatable, CustomStringConvertible {
    case badURL(String)
    case resolve(host: String, code: Int32)
    case connect(host: String, port: Int, errno: Int32)
    case io(step: String, errno: Int32)
    case status(code: Int, url: String)
    case malformedResponse(String)
    case gaveUp(url: String, attempts: Int, last: String)

    public var description: String {
        switch self {
        case let .badURL(u): return "'\(u)' is not an http:// URL"
        case let .resolve(h, c): return "cannot resolve \(h): \(String(cString: gai_strerror(c)))"
        case let .connect(h, p, e): return "cannot connect to \(h):\(p): \(String(cString: strerror(e)))"
        case let .io(step, e): return "\(step): \(String(cString: strerror(e)))"
        case let .status(c, u): return "\(u) answered HTTP \(c)"
        case let .malformedResponse(why): return "malformed HTTP response: \(why)"
        case let .gaveUp(u, n, last): return "download of \(u) failed after \(n) attempts: \(last)"
        }
    }
}

public struct HTTPDownload {
    public var url: String
    public var destination: String
    /// Bounded retries: each attempt resumes where the last one stopped.
    public var maxAttempts = 8
    public var timeoutSeconds = 30

    public init(url: String, destination: String) {
        self.url = url
        self.destination = destination
    }

    struct Target { var host: String; var port: Int; var path: String }

    static func parse(_ url: String) throws(DownloadError) -> Target {
        guard url.hasPrefix("http://") else { throw .badURL(url) }
        let rest = url.dropFirst("http://".count)
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        guard !authority.isEmpty else { throw .badURL(url) }
        var host = String(authority), port = 80
        if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]), p > 0, p < 65536 else { throw .badURL(url) }
            port = p
        }
        return Target(host: host, port: port, path: path.isEmpty ? "/" : String(path))
    }

    /// Fetches the whole file, resuming after every interruption; returns
    /// the number of body bytes received over the network in this call.
    @discardableResult
    public func run(progress: (UInt64, UInt64?) -> Void = { _, _ in }) throws(DownloadError) -> UInt64 {
        let target = try Self.parse(url)
        var received: UInt64 = 0
        var last = ""
        for _ in 0..<maxAttempts {
            do {
                if try attempt(target, received: &received, progress: progress) { return received }
                last = "connection closed early"
            } catch {
                if case .status = error { throw error }
                last = "\(error)"
            }
        }
        throw .gaveUp(url: url, attempts: maxAttempts, last: last)
    }

    /// One request. Returns true when the file is complete.
    func attempt(_ t: Target, received: inout UInt64, progress: (UInt64, UInt64?) -> Void) throws(DownloadError) -> Bool {
        let have = fileSize(destination)
        let fd = try connect(t)
        defer { close(fd) }
        var request = "GET \(t.path) HTTP/1.1\r\nHost: \(t.host)\r\nConnection: close\r\nUser-Agent: outpostd\r\n"
        if have > 0 { request += "Range: bytes=\(have)-\r\n" }
        request += "\r\n"
        try sendAll(fd, Array(request.utf8))

        var buffer = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        var headerEnd: Int?
        while headerEnd == nil {
            let n = try receive(fd, &chunk)
            guard n > 0 else { throw .malformedResponse("connection closed in the headers") }
            buffer += chunk[0..<n]
            headerEnd = find(buffer, Array("\r\n\r\n".utf8))
            if buffer.count > 64 << 10 && headerEnd == nil { throw .malformedResponse("headers longer than 64 KiB") }
        }
        let end = headerEnd ?? 0
        let head = String(decoding: buffer[0..<end], as: UTF8.self)
        let lines = head.split(separator: "\r\n").map(String.init)
        guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1."),
              let code = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else {
            throw .malformedResponse("status line '\(lines.first ?? "")'")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingSpaces()
        }
        var offset: UInt64
        var total: UInt64?
        switch code {
        case 206:
            // Content-Range: bytes START-END/TOTAL; we only ever ask for START = have.
            guard let range = headers["content-range"], range.hasPrefix("bytes "),
                  let dash = range.firstIndex(of: "-"), let slash = range.firstIndex(of: "/"),
                  let start = UInt64(range[range.index(range.startIndex, offsetBy: 6)..<dash]), start == have else {
                throw .malformedResponse("Content-Range '\(headers["content-range"] ?? "")' for bytes=\(have)-")
            }
            offset = start
            total = UInt64(range[range.index(after: slash)...])
        case 200:
            offset = 0
            total = headers["content-length"].flatMap { UInt64($0) }
        case 416 where have > 0:
            return true   // we already have every byte
        default:
            throw .status(code: code, url: url)
        }
        let out = Glibc.open(destination, O_WRONLY | O_CREAT | O_CLOEXEC | (offset == 0 ? O_TRUNC : 0), 0o600)
        guard out >= 0 else { throw .io(step: "open \(destination)", errno: errno) }
        defer { close(out) }
        func write(_ bytes: ArraySlice<UInt8>) throws(DownloadError) {
            var done = 0
            while done < bytes.count {
                let n = bytes.withUnsafeBytes { raw in pwrite(out, raw.baseAddress.map { $0 + done }, raw.count - done, off_t(offset) + off_t(done)) }
                if n < 0 { if errno == EINTR { continue }; throw .io(step: "write \(destination)", errno: errno) }
                done += n
            }
            offset += UInt64(bytes.count)
            received += UInt64(bytes.count)
        }
        try write(buffer[(end + 4)...])
        while true {
            if let total, offset >= total { break }
            let n = try receive(fd, &chunk)
            if n == 0 { break }
            try write(chunk[0..<n])
            progress(offset, total)
        }
        if fsync(out) != 0 { throw .io(step: "fsync \(destination)", errno: errno) }
        guard let total else { return true }   // no length: the close marks the end
        return offset >= total
    }

    func connect(_ t: Target) throws(DownloadError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(t.host, String(t.port), &hints, &list)
        guard rc == 0, let first = list else { throw .resolve(host: t.host, code: rc) }
        defer { freeaddrinfo(list) }
        var lastErrno: Int32 = 0
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cursor {
            let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), ai.pointee.ai_protocol)
            if fd >= 0 {
                var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                if Glibc.connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 { return fd }
                lastErrno = errno
                close(fd)
            }
            cursor = ai.pointee.ai_next
        }
        throw .connect(host: t.host, port: t.port, errno: lastErrno)
    }

    func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws(DownloadError) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { raw in send(fd, raw.baseAddress.map { $0 + done }, raw.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; throw .io(step: "send", errno: errno) }
            done += n
        }
    }

    func receive(_ fd: Int32, _ chunk: inout [UInt8]) throws(DownloadError) -> Int {
        while true {
            let n = chunk.withUnsafeMutableBytes { raw in recv(fd, raw.baseAddress, raw.count, 0) }
            if n >= 0 { return n }
            if errno == EINTR { continue }
            if errno == ECONNRESET { return 0 }   // an interrupted transfer: resume on the next attempt
            throw .io(step: "recv", errno: errno)
        }
    }

    func fileSize(_ path: String) -> UInt64 {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : 0
    }

    func find(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if Array(haystack[i..<i + needle.count]) == needle { return i }
        }
        return nil
    }
}

extension StringProtocol {
    fileprivate func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" || s.last == "\r" { s = s.dropLast() }
        return String(s)
    }
}
