import Foundation

/// The CLI's side of the admin socket: one HTTP/1.1 request per connection
/// (Connection: close), JSON in and out. Blocking and tiny on purpose: the
/// CLI does one thing and exits.
public struct AdminClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    /// Sends a request and returns the decoded JSON; an error answer becomes
    /// a `ControllerError.admin` with the server's one line.
    public func call(_ method: String, _ path: String, body: [String: Any]? = nil) throws(ControllerError) -> Any {
        let data = try raw(method, path, body: body)
        guard let v = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) else {
            throw .admin("the controller's answer is not JSON")
        }
        return v
    }

    /// The body bytes of a successful answer.
    public func raw(_ method: String, _ path: String, body: [String: Any]? = nil) throws(ControllerError) -> Data {
        var payload = Data()
        if let body {
            guard let d = try? JSONSerialization.data(withJSONObject: body) else { throw .admin("cannot encode the request") }
            payload = d
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .admin("socket: \(errnoString(errno))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw .admin("socket path too long: \(socketPath)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            if e == ENOENT || e == ECONNREFUSED {
                throw .admin("the controller is not running (no admin socket at \(socketPath); start `outpost-controller serve`)")
            }
            throw .admin("cannot connect to \(socketPath): \(errnoString(e))")
        }
        var request = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        request += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\n\r\n"
        try writeAll(fd, Data(request.utf8) + payload)
        var response = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw .admin("read from \(socketPath): \(errnoString(errno))")
            }
            if n == 0 { break }
            response.append(contentsOf: buf[0..<n])
        }
        return try Self.parse(response)
    }

    private func writeAll(_ fd: Int32, _ data: Data) throws(ControllerError) {
        var off = 0
        let bytes = [UInt8](data)
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .admin("write to \(socketPath): \(errnoString(errno))")
            }
            off += n
        }
    }

    /// Status line, headers, then the body (by Content-Length or chunked).
    static func parse(_ r: Data) throws(ControllerError) -> Data {
        let sep = Data("\r\n\r\n".utf8)
        guard let end = r.range(of: sep) else { throw .admin("the controller's answer is not HTTP") }
        let head = String(decoding: r[..<end.lowerBound], as: UTF8.self)
        var body = Data(r[end.upperBound...])
        let lines = head.split(separator: "\r\n")
        guard let status = lines.first?.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else {
            throw .admin("the controller's answer has no status")
        }
        let chunked = lines.contains { $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked") }
        if chunked { body = dechunk(body) }
        guard (200..<300).contains(status) else {
            if let o = try? JSONSerialization.jsonObject(with: body) as? [String: Any], let e = o["error"] as? String {
                throw .admin(e)
            }
            throw .admin("the controller answered \(status)")
        }
        return body
    }

    static func dechunk(_ d: Data) -> Data {
        var out = Data()
        var i = d.startIndex
        while i < d.endIndex {
            guard let lineEnd = d[i...].range(of: Data("\r\n".utf8)) else { break }
            let sizeText = String(decoding: d[i..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let n = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), n > 0 else { break }
            let start = lineEnd.upperBound
            guard d.distance(from: start, to: d.endIndex) >= n else { break }
            out.append(d[start..<d.index(start, offsetBy: n)])
            i = d.index(start, offsetBy: n + 2, limitedBy: d.endIndex) ?? d.endIndex
        }
        return out
    }
}
