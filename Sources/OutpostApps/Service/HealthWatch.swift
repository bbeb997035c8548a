// The guest health check of one instance (AppHealthCheck): once its QEMU has been
// running for the grace period, a console line containing the marker must appear
// at least every `timeout`. The check judges only a running instance, and starts
// over with each QEMU (a restart, a crash), so a slow boot is never counted.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform

struct HealthWatch: Sendable {
    private var spawn = -1
    private var since: MonotonicClock.Instant?
    private var lastMarker: MonotonicClock.Instant?

    /// A probe of QEMU number `spawn` answered: as good as a marker line.
    mutating func answered(spawn: Int, now: MonotonicClock.Instant = MonotonicClock.now()) {
        if spawn == self.spawn { lastMarker = now }
    }

    /// One look after a console drain. Returns how long the guest has been silent when the
    /// check fails now (the caller kills its QEMU), nil while it passes or cannot judge.
    mutating func observe(_ check: AppHealthCheck, running: Bool, spawn: Int, lines: [String],
                          now: MonotonicClock.Instant = MonotonicClock.now()) -> Duration? {
        guard running else { return nil }
        if spawn != self.spawn {
            self.spawn = spawn
            since = now
            lastMarker = nil
        }
        if let marker = check.consoleMarker, lines.contains(where: { $0.contains(marker) }) {
            lastMarker = now
            return nil
        }
        guard let since else { return nil }
        // The clock runs from the end of the grace period or the last marker, whichever is later.
        let graceEnd = since.advanced(by: .seconds(check.graceSeconds))
        let reference = max(graceEnd, lastMarker ?? graceEnd)
        guard now >= reference else { return nil }
        let silent = now - reference
        return silent >= .seconds(check.timeoutSeconds) ? now - (lastMarker ?? since) : nil
    }
}

/// The network half of a health check: a TCP connect to the app's address, or an HTTP/1.0 GET
/// answered with a 2xx or 3xx status, within `timeout`. Runs on a thread of its own (AppService
/// starts at most one per app at a time), never on the agent's loop.
enum HealthProbe {
    static func answers(address: String, port: Int, httpPath: String?, timeout: Duration) -> Bool {
        guard let ip = IPRange(address)?.address, ip.count == 4 else { return false }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { _ = close(fd) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = in_port_t(UInt16(port).bigEndian)
        sin.sin_addr.s_addr = (UInt32(ip[0]) | UInt32(ip[1]) << 8 | UInt32(ip[2]) << 16 | UInt32(ip[3]) << 24)
        let deadline = Deadline(after: timeout)
        let started = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard started == 0 || errno == EINPROGRESS else { return false }
        guard wait(fd, events: Int16(POLLOUT), until: deadline) else { return false }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 else { return false }
        guard let httpPath else { return true }
        let request = Array("GET \(httpPath) HTTP/1.0\r\nHost: \(address):\(port)\r\nUser-Agent: outpostd-health\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return false }
        // The status line: "HTTP/1.x NNN ...".
        var reply: [UInt8] = []
        while reply.count < 64, !reply.contains(0x0a) {
            guard wait(fd, events: Int16(POLLIN), until: deadline) else { return false }
            var chunk = [UInt8](repeating: 0, count: 64)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { break }
            reply += chunk[..<n]
        }
        let line = String(decoding: reply, as: UTF8.self)
        let words = line.split(separator: " ")
        guard words.count >= 2, words[0].hasPrefix("HTTP/1."), let status = Int(words[1]) else { return false }
        return (200..<400).contains(status)
    }

    private static func wait(_ fd: Int32, events: Int16, until deadline: Deadline) -> Bool {
        while !deadline.hasPassed {
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let milliseconds = max(1, Int32(clamping: deadline.remaining.components.seconds * 1000
                                            + deadline.remaining.components.attoseconds / 1_000_000_000_000_000))
            let ready = poll(&entry, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            return ready > 0 && entry.revents & events != 0
        }
        return false
    }
}
