import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Why a connectivity probe failed: the step and the errno, for the console report.
public enum ProbeError: Error, Equatable, CustomStringConvertible {
    case system(call: String, errno: Int32)
    case timeout(step: String)
    case badResponse(statusLine: String)

    public var description: String {
        switch self {
        case .system(let call, let e): return "probe: \(call): \(String(cString: strerror(e)))"
        case .timeout(let step): return "probe: timed out during \(step)"
        case .badResponse(let line): return "probe: unexpected response '\(line)'"
        }
    }
}

/// Where the connectivity test goes: the controller, or a configured probe URL (plain HTTP here).
public struct ProbeTarget: Sendable {
    public let address: IPv4
    public let port: UInt16
    public let path: String
    public init(address: IPv4, port: UInt16, path: String = "/") {
        self.address = address
        self.port = port
        self.path = path
    }
}

/// A minimal HTTP/1.0 GET over a non-blocking socket, optionally pinned to one interface with
/// SO_BINDTODEVICE so each port is tested on its own, whatever the default route says.
/// Every step shares one deadline, so a dead path costs at most `timeout`.
public enum HTTPProbe {
    /// Returns the response body of a 200 answer.
    public static func get(_ target: ProbeTarget, device: String?, timeout: Duration) throws(ProbeError) -> String {
        let deadline = ContinuousClock.now + timeout
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        defer { close(fd) }
        if let device {
            let ok = device.withCString { setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, $0, socklen_t(strlen($0) + 1)) }
            guard ok == 0 else { throw .system(call: "setsockopt(SO_BINDTODEVICE \(device))", errno: errno) }
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = target.port.bigEndian
        let o = target.address.octets
        addr.sin_addr.s_addr = (UInt32(o[0]) << 24 | UInt32(o[1]) << 16 | UInt32(o[2]) << 8 | UInt32(o[3])).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            guard errno == EINPROGRESS || errno == EINTR else { throw .system(call: "connect", errno: errno) }
            try wait(fd, for: Int16(POLLOUT), until: deadline, step: "connect")
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else { throw .system(call: "getsockopt(SO_ERROR)", errno: errno) }
            guard error == 0 else { throw .system(call: "connect", errno: error) }
        }
        let request = Array("GET \(target.path) HTTP/1.0\r\nHost: \(target.address)\r\nConnection: close\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress.map { $0 + sent }, request.count - sent, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            guard n < 0, errno == EAGAIN || errno == EINTR else { throw .system(call: "send", errno: errno) }
            try wait(fd, for: Int16(POLLOUT), until: deadline, step: "send")
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while response.count < 65_536 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { response += buffer[0..<n]; continue }
            if n == 0 { break }
            guard errno == EAGAIN || errno == EINTR else { throw .system(call: "recv", errno: errno) }
            try wait(fd, for: Int16(POLLIN), until: deadline, step: "receive")
        }
        let text = String(decoding: response, as: UTF8.self)
        let statusLine = text.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1] == "200" else { throw .badResponse(statusLine: statusLine) }
        guard let split = text.range(of: "\r\n\r\n") else { return "" }
        return String(text[split.upperBound...])
    }

    private static func wait(_ fd: Int32, for events: Int16, until deadline: ContinuousClock.Instant, step: String) throws(ProbeError) {
        while true {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { throw .timeout(step: step) }
            let ms = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            var p = pollfd(fd: fd, events: events, revents: 0)
            let r = poll(&p, 1, ms)
            if r > 0 { return }
            if r < 0 && errno != EINTR { throw .system(call: "poll", errno: errno) }
        }
    }
}
