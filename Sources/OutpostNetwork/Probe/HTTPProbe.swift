import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif

/// Why a connectivity probe failed: the step, the errno or the answer, for the console report.
public enum ProbeError: Error, Equatable, CustomStringConvertible {
    case system(call: String, errno: Int32)
    case timeout(step: String)
    case resolve(host: String, detail: String)
    case proxyRefused(proxy: String, statusLine: String)
    case badResponse(statusLine: String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .system(let call, let e): return "probe: \(call): \(errnoText(e))"
        case .timeout(let step): return "probe: timed out during \(step)"
        case .resolve(let host, let detail): return "probe: cannot resolve \(host): \(detail)"
        case .proxyRefused(let proxy, let line): return "probe: proxy \(proxy) refused CONNECT: '\(line)'"
        case .badResponse(let line): return "probe: unexpected response '\(line)'"
        case .unsupported(let what): return "probe: \(what) is not supported"
        }
    }
}

/// A minimal HTTP/1.0 GET over a non-blocking socket, optionally pinned to one interface with
/// SO_BINDTODEVICE so each port is tested on its own whatever the default route says, and
/// optionally tunnelled through an HTTP proxy with CONNECT, as enterprise networks require.
/// Every step shares one deadline, so a dead path costs at most `timeout`.
public enum HTTPProbe {
    /// Returns the response body of a 200 answer.
    public static func get(_ url: HTTPURL, device: String?, proxy: HTTPURL? = nil, timeout: Duration) throws(ProbeError) -> String {
        guard url.scheme == "http" else { throw .unsupported("https without the OutpostHTTP TLS client") }
        let deadline = ContinuousClock.now + timeout
        let hop = proxy ?? url
        let fd = try connect(to: try resolve(hop.host), port: hop.port, device: device, deadline: deadline)
        defer { close(fd) }
        let authority = "\(url.host):\(url.port)"
        if let proxy {
            try send(fd, "CONNECT \(authority) HTTP/1.1\r\nHost: \(authority)\r\n\r\n", deadline: deadline)
            let head = try receive(fd, until: deadline, step: "proxy CONNECT", stopAtHeaderEnd: true)
            let line = statusLine(head)
            guard statusCode(line) == "200" else { throw .proxyRefused(proxy: "\(proxy.host):\(proxy.port)", statusLine: line) }
        }
        try send(fd, "GET \(url.path) HTTP/1.0\r\nHost: \(authority)\r\nConnection: close\r\n\r\n", deadline: deadline)
        let response = try receive(fd, until: deadline, step: "receive", stopAtHeaderEnd: false)
        let line = statusLine(response)
        guard statusCode(line) == "200" else { throw .badResponse(statusLine: line) }
        guard let end = headerEnd(response) else { return "" }
        return String(decoding: response[end...], as: UTF8.self)
    }

    /// An IPv4 literal directly, a name through the system resolver (which reads resolv.conf,
    /// and so follows the active port).
    static func resolve(_ host: String) throws(ProbeError) -> IPv4 {
        if let literal = IPv4(host) { return literal }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0, let list else { throw .resolve(host: host, detail: String(cString: gai_strerror(rc))) }
        defer { freeaddrinfo(list) }
        guard let sa = list.pointee.ai_addr else { throw .resolve(host: host, detail: "no IPv4 address") }
        let value = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
        return IPv4(value: value)
    }

    private static func connect(to address: IPv4, port: UInt16, device: String?, deadline: ContinuousClock.Instant) throws(ProbeError) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        do throws(ProbeError) {
            if let device {
                let ok = device.withCString { setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, $0, socklen_t(strlen($0) + 1)) }
                guard ok == 0 else { throw .system(call: "setsockopt(SO_BINDTODEVICE \(device))", errno: errno) }
            }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = port.bigEndian
            addr.sin_addr.s_addr = address.value.bigEndian
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if rc != 0 {
                guard errno == EINPROGRESS || errno == EINTR else { throw .system(call: "connect \(address):\(port)", errno: errno) }
                try wait(fd, for: Int16(POLLOUT), until: deadline, step: "connect")
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else { throw .system(call: "getsockopt(SO_ERROR)", errno: errno) }
                guard error == 0 else { throw .system(call: "connect \(address):\(port)", errno: error) }
            }
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    private static func send(_ fd: Int32, _ text: String, deadline: ContinuousClock.Instant) throws(ProbeError) {
        let request = Array(text.utf8)
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress.map { $0 + sent }, request.count - sent, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            guard n < 0, errno == EAGAIN || errno == EINTR else { throw .system(call: "send", errno: errno) }
            try wait(fd, for: Int16(POLLOUT), until: deadline, step: "send")
        }
    }

    /// Reads until the peer closes (or, for a CONNECT answer, until the header ends, so no byte
    /// of the tunnelled stream is consumed: the proxy sends nothing more before our request).
    private static func receive(_ fd: Int32, until deadline: ContinuousClock.Instant, step: String, stopAtHeaderEnd: Bool) throws(ProbeError) -> [UInt8] {
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: stopAtHeaderEnd ? 1 : 4096)
        while response.count < 65_536 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                response += buffer[0..<n]
                if stopAtHeaderEnd && headerEnd(response) != nil { break }
                continue
            }
            if n == 0 { break }
            guard errno == EAGAIN || errno == EINTR else { throw .system(call: "recv", errno: errno) }
            try wait(fd, for: Int16(POLLIN), until: deadline, step: step)
        }
        return response
    }

    private static func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i + 4
        }
        return nil
    }

    private static func statusLine(_ bytes: [UInt8]) -> String {
        let end = bytes.firstIndex(of: 13) ?? bytes.firstIndex(of: 10) ?? min(bytes.count, 200)
        return String(decoding: bytes[..<min(end, 200)], as: UTF8.self)
    }

    private static func statusCode(_ line: String) -> String? {
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1.") else { return nil }
        return String(parts[1])
    }

    private static func wait(_ fd: Int32, for events: Int16, until deadline: ContinuousClock.Instant, step: String) throws(ProbeError) {
        while true {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { throw .timeout(step: step) }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let r = poll(&p, 1, pollMilliseconds(left))
            if r > 0 { return }
            if r < 0 && errno != EINTR { throw .system(call: "poll", errno: errno) }
        }
    }
}
