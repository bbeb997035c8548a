// A small HTTP/1.1 client for the device: one request per connection
// (Connection: close), responses streamed so a 500 MB bundle never sits in
// memory, and the same code for downloads, connectivity probes and (later)
// the controller.
//
//   request ──▶ [proxy: CONNECT host:port, for http:// and https:// alike]
//           ──▶ [TLS to the origin for https://] ──▶ status line, headers
//           ──▶ body: Content-Length | chunked | until close

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// How to reach the server; the defaults suit a download.
public struct HTTPOptions: Sendable {
    /// Pin the connection to one interface (SO_BINDTODEVICE): a port's own probe.
    public var device: String?
    /// An http:// proxy. Every target is tunnelled with CONNECT, so a refusal
    /// is the proxy's own answer, never mistaken for the server's.
    public var proxy: HTTPURL?
    /// Anchors for https://; nil means the system's default store.
    public var tls: TLSContext?
    /// From the first connect to the response headers.
    public var connectTimeout: Duration = .seconds(15)
    /// The longest wait for any one read or write after that.
    public var idleTimeout: Duration = .seconds(30)
    /// A bound on the whole exchange, body included, when set.
    public var deadline: Deadline?

    public init() {}
}

public struct HTTPRequest: Sendable {
    public var method = "GET"
    public var url: HTTPURL
    /// Extra headers; Host, Connection and Content-Length are the client's.
    public var headers: [(String, String)] = []
    public var body: [UInt8] = []

    public init(_ url: HTTPURL, method: String = "GET", headers: [(String, String)] = [], body: [UInt8] = []) {
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
    }
}

public enum HTTPClient {
    static let maxHeaderBytes = 64 << 10

    /// Sends `request` and returns once the response headers are in; the body
    /// is read from the returned response.
    public static func send(_ request: HTTPRequest, options: HTTPOptions = HTTPOptions()) throws(HTTPError) -> HTTPResponse {
        let url = request.url
        let label = url.description
        var headDeadline = Deadline(after: options.connectTimeout)
        if let overall = options.deadline { headDeadline = min(headDeadline, overall) }

        let connection: Connection
        if let proxy = options.proxy {
            connection = try Connection.open(host: proxy.host, port: proxy.port, device: options.device,
                                             label: "\(label) via proxy \(proxy.hostPort)", until: headDeadline)
            try tunnel(connection, to: url, proxy: proxy, until: headDeadline)
        } else {
            connection = try Connection.open(host: url.host, port: url.port, device: options.device, label: label,
                                             until: headDeadline)
        }
        if url.scheme == .https {
            let context: TLSContext
            if let given = options.tls { context = given } else { context = try TLSContext(caFiles: [], systemDefaults: true) }
            try connection.startTLS(context, host: url.host, until: headDeadline)
        }

        var text = "\(request.method) \(url.path) HTTP/1.1\r\nHost: \(url.authority)\r\nConnection: close\r\n"
        for (name, value) in request.headers {
            guard !name.contains(where: { $0 == ":" || $0 == "\r" || $0 == "\n" }), !value.contains(where: { $0 == "\r" || $0 == "\n" }) else {
                throw .badURL(label, reason: "header '\(name)' has a line break or colon")
            }
            text += "\(name): \(value)\r\n"
        }
        if !request.body.isEmpty || request.method == "POST" || request.method == "PUT" {
            text += "Content-Length: \(request.body.count)\r\n"
        }
        text += "\r\n"
        try connection.writeAll(Array(text.utf8) + request.body, until: headDeadline)

        let reader = ByteReader(connection)
        let head = try reader.readHead(until: headDeadline, step: "response headers")
        let (status, headers) = try parseHead(head, label: label)
        let bodyless = request.method == "HEAD" || status == 204 || status == 304 || (100..<200).contains(status)
        return HTTPResponse(status: status, headers: headers, reader: reader, options: options, bodyless: bodyless)
    }

    /// GET `url` and read the whole body, at most `limit` bytes: probes and small documents.
    public static func get(_ url: HTTPURL, options: HTTPOptions = HTTPOptions(), limit: Int = 1 << 20) throws(HTTPError) -> (status: Int, body: [UInt8]) {
        let response = try send(HTTPRequest(url), options: options)
        return (response.status, try response.readAll(limit: limit))
    }

    /// CONNECT host:port through an HTTP proxy; after a 2xx the socket is a tunnel.
    static func tunnel(_ connection: Connection, to url: HTTPURL, proxy: HTTPURL, until deadline: Deadline) throws(HTTPError) {
        let text = "CONNECT \(url.hostPort) HTTP/1.1\r\nHost: \(url.hostPort)\r\n\r\n"
        try connection.writeAll(Array(text.utf8), until: deadline)
        // Read byte by byte up to the blank line: whatever follows belongs to TLS.
        var head: [UInt8] = []
        var byte = [UInt8](repeating: 0, count: 1)
        while !head.ends(with: [13, 10, 13, 10]) {
            guard head.count < maxHeaderBytes else { throw .malformedResponse(target: proxy.hostPort, detail: "CONNECT answer longer than 64 KiB") }
            let n = try byte.withTypedMutableBytes { (raw) throws(HTTPError) -> Int in try connection.read(into: raw, until: deadline) }
            guard n == 1 else { throw .closed(target: "proxy \(proxy.hostPort)", step: "CONNECT") }
            head.append(byte[0])
        }
        let statusLine = String(decoding: head.prefix { $0 != 13 }, as: UTF8.self).printable
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (200..<300).contains(code) else {
            throw .proxy(proxy: proxy.hostPort, statusLine: statusLine)
        }
    }

    static func parseHead(_ head: [UInt8], label: String) throws(HTTPError) -> (Int, [String: String]) {
        let lines = String(decoding: head, as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: true)
        guard let statusLine = lines.first else { throw .malformedResponse(target: label, detail: "no status line") }
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let status = Int(parts[1]) else {
            throw .malformedResponse(target: label, detail: "status line '\(statusLine.prefix(80).printable)'")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else {
                throw .malformedResponse(target: label, detail: "header line without ':' '\(line.prefix(80).printable)'")
            }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingHTTPSpace()
            headers[name] = headers[name].map { "\($0), \(value)" } ?? value
        }
        return (status, headers)
    }
}

/// A response whose body is read as it arrives.
public final class HTTPResponse {
    public let status: Int
    /// Lower-cased names; repeated headers joined with ", ".
    public let headers: [String: String]
    private let reader: ByteReader
    private let options: HTTPOptions
    private enum Framing { case length(UInt64), chunked, untilClose, none }
    private var framing: Framing
    private var chunkLeft: UInt64 = 0
    private var finished = false

    init(status: Int, headers: [String: String], reader: ByteReader, options: HTTPOptions, bodyless: Bool) {
        self.status = status
        self.headers = headers
        self.reader = reader
        self.options = options
        if bodyless {
            framing = .none
        } else if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            framing = .chunked
        } else if let length = headers["content-length"].flatMap({ UInt64($0) }) {
            framing = .length(length)
        } else {
            framing = .untilClose
        }
    }

    /// The body's length when the server said it, before reading.
    public var contentLength: UInt64? {
        if case .length(let n) = framing { return n }
        return nil
    }

    private var deadline: Deadline {
        let idle = Deadline(after: options.idleTimeout)
        return options.deadline.map { min($0, idle) } ?? idle
    }

    /// Reads body bytes into `buffer`; 0 means the body is complete. A body
    /// cut short (fewer bytes than announced) throws `.closed`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(HTTPError) -> Int {
        guard !finished, buffer.count > 0 else { return 0 }
        let label = reader.connection.label
        switch framing {
        case .none:
            finished = true
            return 0
        case .length(let left):
            if left == 0 { finished = true; return 0 }
            let n = try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(min(UInt64(buffer.count), left))]),
                                    until: deadline)
            guard n > 0 else { throw .closed(target: label, step: "body (\(left) bytes missing)") }
            framing = .length(left - UInt64(n))
            return n
        case .untilClose:
            let n = try reader.read(into: buffer, until: deadline)
            if n == 0 { finished = true }
            return n
        case .chunked:
            if chunkLeft == 0 {
                let sizeLine = try reader.readLine(until: deadline, step: "chunk size")
                let hex = sizeLine.prefix { $0 != ";" }.trimmingHTTPSpace()
                guard let size = UInt64(hex, radix: 16) else {
                    throw .malformedResponse(target: label, detail: "chunk size '\(sizeLine.prefix(40).printable)'")
                }
                if size == 0 {
                    // Trailers, then the blank line.
                    while try !reader.readLine(until: deadline, step: "trailers").isEmpty {}
                    finished = true
                    return 0
                }
                chunkLeft = size
            }
            let n = try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(min(UInt64(buffer.count), chunkLeft))]),
                                    until: deadline)
            guard n > 0 else { throw .closed(target: label, step: "chunked body") }
            chunkLeft -= UInt64(n)
            if chunkLeft == 0 {
                guard try reader.readLine(until: deadline, step: "chunk end").isEmpty else {
                    throw .malformedResponse(target: label, detail: "no CRLF after a chunk")
                }
            }
            return n
        }
    }

    /// The whole body, refusing more than `limit` bytes.
    public func readAll(limit: Int) throws(HTTPError) -> [UInt8] {
        var body: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let n = try chunk.withTypedMutableBytes { (raw) throws(HTTPError) -> Int in try read(into: raw) }
            if n == 0 { return body }
            body += chunk[..<n]
            guard body.count <= limit else {
                throw .malformedResponse(target: reader.connection.label, detail: "body longer than \(limit) bytes")
            }
        }
    }
}

/// Buffered reads over a connection: headers and chunk lines are found in the
/// buffer, body bytes beyond it come straight from the socket.
final class ByteReader {
    let connection: Connection
    private var buffer: [UInt8] = []
    private var start = 0

    init(_ connection: Connection) { self.connection = connection }

    private var available: Int { buffer.count - start }

    private func fill(until deadline: Deadline) throws(HTTPError) -> Bool {
        if start > 0 && start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        let n = try chunk.withTypedMutableBytes { (raw) throws(HTTPError) -> Int in try connection.read(into: raw, until: deadline) }
        buffer += chunk[..<n]
        return n > 0
    }

    /// Up to and excluding the blank line that ends the headers.
    func readHead(until deadline: Deadline, step: String) throws(HTTPError) -> [UInt8] {
        let end = try scan(for: [13, 10, 13, 10], limit: HTTPClient.maxHeaderBytes, until: deadline, step: step)
        let head = Array(buffer[start..<end])
        start = end + 4
        return head
    }

    /// One CRLF-terminated line, without the CRLF.
    func readLine(until deadline: Deadline, step: String) throws(HTTPError) -> String {
        let end = try scan(for: [13, 10], limit: 4096, until: deadline, step: step)
        let line = String(decoding: buffer[start..<end], as: UTF8.self)
        start = end + 2
        return line
    }

    /// The index of `needle` at or after `start`, reading more as needed.
    /// `scanned` counts bytes after `start` already searched; it stays valid
    /// when `fill` compacts the buffer, which happens only when it is empty.
    private func scan(for needle: [UInt8], limit: Int, until deadline: Deadline, step: String) throws(HTTPError) -> Int {
        var scanned = 0
        while true {
            var i = start + max(0, scanned - (needle.count - 1))
            while i + needle.count <= buffer.count {
                if buffer[i] == needle[0] && buffer[i + 1] == needle[1]
                    && (needle.count == 2 || (buffer[i + 2] == needle[2] && buffer[i + 3] == needle[3])) {
                    return i
                }
                i += 1
            }
            scanned = available
            guard available <= limit else {
                throw .malformedResponse(target: connection.label, detail: "\(step) longer than \(limit) bytes")
            }
            guard try fill(until: deadline) else { throw .closed(target: connection.label, step: step) }
        }
    }

    /// Buffered bytes first, then the socket.
    func read(into out: UnsafeMutableRawBufferPointer, until deadline: Deadline) throws(HTTPError) -> Int {
        if available > 0 {
            let n = min(available, out.count)
            buffer.withUnsafeBytes { raw in out.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[start..<start + n])) }
            start += n
            return n
        }
        return try connection.read(into: out, until: deadline)
    }
}

extension Array where Element == UInt8 {
    fileprivate func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}

extension StringProtocol {
    /// Control characters shown as '?', so a hostile reply cannot break the one-line error.
    var printable: String { String(map { $0.isASCII && ($0.asciiValue ?? 0) < 32 || $0 == "\u{7f}" ? "?" : $0 }) }

    func trimmingHTTPSpace() -> String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" || s.last == "\r" { s = s.dropLast() }
        return String(s)
    }
}
