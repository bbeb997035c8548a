import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import Synchronization

/// A DHCPv4 client for one port (RFC 2131), run on its own thread by the manager.
///
///     INIT ──DISCOVER──▶ OFFER ──REQUEST──▶ ACK ──▶ BOUND ──T1──▶ RENEWING (unicast to the server)
///       ▲                          │ NAK                        │ T2
///       └──────────────────────────┴──── expiry / NAK ◀── REBINDING (broadcast)
///
/// It uses a kernel UDP socket on port 68 pinned to the port with SO_BINDTODEVICE; requests
/// set the BROADCAST flag, so the server's answers reach the port before it has an address.
/// Retries back off exponentially up to a bound, and `kick()` (carrier came back) retries at once.
public final class DHCPClient: Sendable {
    public struct Timing: Sendable {
        /// First wait for an answer; doubled after each silence up to `maximumRetry`.
        public var initialRetry: Duration = .seconds(2)
        public var maximumRetry: Duration = .seconds(32)
        /// REQUESTs sent for one OFFER before starting over with DISCOVER.
        public var requestAttempts = 3
        public init() {}
    }

    public enum Event: Sendable {
        case bound(DHCPLease)
        case lost(reason: String)
    }

    public let device: String
    private let mac: [UInt8]
    private let timing: Timing
    private let report: @Sendable (Event) -> Void
    private let control = Mutex((stopped: false, kicked: false, lastError: String?.none))
    /// Wakes `run` out of poll(2) for stop and kick.
    private let wakeup: Wakeup
    /// The UDP socket; opened and used by the `run` thread, closed at deinit.
    private let socket = Mutex<Int32>(-1)
    private var socketFD: Int32 { socket.withLock { $0 } }

    public init(device: String, mac: [UInt8], timing: Timing = Timing(), report: @escaping @Sendable (Event) -> Void) throws(NetlinkError) {
        self.device = device
        self.mac = mac
        self.timing = timing
        self.report = report
        do { wakeup = try Wakeup(label: "dhcp \(device)") } catch { throw .system(error) }
    }

    deinit {
        if socketFD >= 0 { close(socketFD) }
    }

    /// The last problem the client met (socket error, NAK, silence), for status.
    public var lastError: String? { control.withLock { $0.lastError } }

    public func stop() {
        control.withLock { $0.stopped = true }
        poke()
    }

    /// Asks a client that is waiting for a server to try again now (the port's carrier returned).
    public func kick() {
        control.withLock { $0.kicked = true }
        poke()
    }

    private func poke() { wakeup.signal() }

    private var stopped: Bool { control.withLock { $0.stopped } }

    private func note(_ error: String) { control.withLock { $0.lastError = error } }

    /// Runs until `stop()`; call on a thread already in the port's network namespace.
    public func run() {
        var backoff = timing.initialRetry
        var lease: DHCPLease?
        while !stopped {
            if socketFD < 0 {
                do { let fd = try openSocket(); socket.withLock { $0 = fd } } catch {
                    note("\(error)")
                    _ = waitForAnswer(until: .now + backoff, xid: 0) { _ in false }
                    backoff = min(backoff * 2, timing.maximumRetry)
                    continue
                }
            }
            if let current = lease {
                lease = maintain(current)
                continue
            }
            if let acquired = acquire(retryAfter: backoff) {
                lease = acquired
                backoff = timing.initialRetry
                report(.bound(acquired))
            } else if control.withLock({ let k = $0.kicked; $0.kicked = false; return k }) {
                backoff = timing.initialRetry
            } else {
                backoff = min(backoff * 2, timing.maximumRetry)
            }
        }
    }

    // MARK: states

    /// INIT → SELECTING → REQUESTING: one DISCOVER round; nil when no lease came of it.
    private func acquire(retryAfter wait: Duration) -> DHCPLease? {
        let xid = UInt32.random(in: 1...UInt32.max)
        var discover = DHCPMessage(op: DHCPMessage.bootRequest, xid: xid, chaddr: mac, options: DHCPOptions(messageType: .discover))
        discover.flags = DHCPMessage.broadcastFlag
        discover.options.parameterRequest = DHCPMessage.requestedParameters
        guard send(discover, to: IPv4(value: UInt32.max)) else { return nil }
        guard let offer = waitForAnswer(until: .now + jittered(wait), xid: xid, { $0.options.messageType == .offer }),
              let server = offer.options.serverIdentifier else {
            note("dhcp \(device): no offer")
            return nil
        }
        var request = discover
        request.options = DHCPOptions(messageType: .request)
        request.options.requestedAddress = offer.yiaddr
        request.options.serverIdentifier = server
        request.options.parameterRequest = DHCPMessage.requestedParameters
        var answerWait = timing.initialRetry
        for _ in 0..<max(1, timing.requestAttempts) {
            guard !stopped, send(request, to: IPv4(value: UInt32.max)) else { return nil }
            let answer = waitForAnswer(until: .now + jittered(answerWait), xid: xid) {
                ($0.options.messageType == .ack || $0.options.messageType == .nak) && $0.options.serverIdentifier == server
            }
            if let answer {
                if answer.options.messageType == .nak { note("dhcp \(device): server \(server) refused \(offer.yiaddr) (NAK)"); return nil }
                guard let lease = DHCPLease(ack: answer, at: .now) else { note("dhcp \(device): ACK without address or server id"); return nil }
                return lease
            }
            answerWait = min(answerWait * 2, timing.maximumRetry)
        }
        note("dhcp \(device): no answer to REQUEST for \(offer.yiaddr) from \(server)")
        return nil
    }

    /// BOUND → RENEWING → REBINDING → expiry. Returns the lease to keep (possibly renewed), or
    /// nil when it is lost, after reporting it.
    private func maintain(_ lease: DHCPLease) -> DHCPLease? {
        // A kick only matters while looking for a server; a bound lease ignores it.
        control.withLock { $0.kicked = false }
        let now = ContinuousClock.now
        let phase = lease.phase(at: now)
        guard let deadline = lease.nextDeadline(at: now) else {
            _ = waitForAnswer(until: now + .seconds(3600), xid: 0) { _ in false }
            return lease
        }
        switch phase {
        case .bound:
            _ = waitForAnswer(until: deadline, xid: 0) { _ in false }
            return lease
        case .renewing, .rebinding:
            let xid = UInt32.random(in: 1...UInt32.max)
            var request = DHCPMessage(op: DHCPMessage.bootRequest, xid: xid, chaddr: mac, options: DHCPOptions(messageType: .request))
            request.ciaddr = lease.address
            request.options.parameterRequest = DHCPMessage.requestedParameters
            let target = phase == .renewing ? lease.server : IPv4(value: UInt32.max)
            // RFC 2131 §4.4.5: retransmit after half the time left to the next deadline (at least 1 s here).
            let wait = max(.seconds(1), now.duration(to: deadline) / 2)
            _ = send(request, to: target)
            let answer = waitForAnswer(until: min(deadline, now + wait), xid: xid) {
                $0.options.messageType == .ack || $0.options.messageType == .nak
            }
            if let answer {
                if answer.options.messageType == .nak {
                    report(.lost(reason: "dhcp \(device): server refused to extend \(lease.address) (NAK)"))
                    return nil
                }
                if let renewed = DHCPLease(ack: answer, at: .now) {
                    report(.bound(renewed))
                    return renewed
                }
            }
            return lease
        case .expired:
            report(.lost(reason: "dhcp \(device): lease on \(lease.address) expired"))
            return nil
        }
    }

    // MARK: socket

    private func openSocket() throws(NetlinkError) -> Int32 {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system(.current("socket", "dhcp \(device)")) }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        let steps: [(String, () -> Int32)] = [
            ("setsockopt(SO_REUSEADDR)", { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size) }),
            ("setsockopt(SO_BROADCAST)", { setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, size) }),
            ("setsockopt(SO_BINDTODEVICE)", { self.device.withCString { setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, $0, socklen_t(strlen($0) + 1)) } }),
            ("bind(0.0.0.0:68)", {
                var addr = sockaddr_in()
                addr.sin_family = sa_family_t(AF_INET)
                addr.sin_port = UInt16(68).bigEndian
                return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            }),
        ]
        for (call, step) in steps where step() != 0 {
            let error = SystemError.current(call, device)
            close(fd)
            throw .system(error)
        }
        return fd
    }

    private func send(_ message: DHCPMessage, to address: IPv4) -> Bool {
        let bytes = message.encoded()
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(67).bigEndian
        addr.sin_addr.s_addr = address.value.bigEndian
        let fd = socketFD
        let target = "\(address):67"
        let sent = Result { () throws(SystemError) -> Int in
            try withUnsafePointer(to: &addr) { (a) throws(SystemError) -> Int in
                try a.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(SystemError) -> Int in
                    try systemCall("sendto", target) {
                        bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                    }
                }
            }
        }
        switch sent {
        case .success(let n) where n == bytes.count: return true
        case .success(let n): note("dhcp \(device): sendto \(target): sent \(n) of \(bytes.count) bytes")
        case .failure(let error): note("dhcp \(device): \(error)")
        }
        return false
    }

    /// Waits until `deadline` for a reply with this xid and our hardware address that `accept`
    /// takes; returns early (nil) on stop or kick. Malformed datagrams are skipped and noted.
    private func waitForAnswer(until deadline: ContinuousClock.Instant, xid: UInt32, _ accept: (DHCPMessage) -> Bool) -> DHCPMessage? {
        var buffer = [UInt8](repeating: 0, count: 1500)
        while !stopped {
            if control.withLock({ $0.kicked }) { return nil }
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return nil }
            var fds = [pollfd(fd: socketFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeup.fileDescriptor, events: Int16(POLLIN), revents: 0)]
            do throws(SystemError) { _ = try pollDescriptors(&fds, timeout: left, object: "dhcp \(device)") } catch {
                note("dhcp \(device): \(error)")
                return nil
            }
            if fds[1].revents != 0 { wakeup.consume() }
            guard fds[0].revents != 0 else { continue }
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(socketFD, $0.baseAddress, $0.count, 0) }
                if n < 0 { break }
                let message: DHCPMessage
                do { message = try DHCPMessage(decoding: Array(buffer[0..<n])) } catch {
                    note("dhcp \(device): \(error)")
                    continue
                }
                guard message.op == DHCPMessage.bootReply, message.xid == xid, message.chaddr == Array(mac.prefix(6)) else { continue }
                if accept(message) { return message }
            }
        }
        return nil
    }

    /// ±10 % so many devices restarting together do not retry in lock-step.
    private func jittered(_ d: Duration) -> Duration { d * Double.random(in: 0.9...1.1) }
}
