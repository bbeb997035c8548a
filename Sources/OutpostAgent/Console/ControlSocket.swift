// How `outpostd status` reaches the running PID 1: a UNIX stream socket at
// /run/outpost/control.sock (tmpfs, root only, gone after a reboot). The
// client sends one request line ("status" or "status --json"); PID 1 renders
// the report from its live state, writes it, and closes. A socket rather
// than a periodically rewritten file: the answer is never stale, and a PID 1
// that cannot answer is itself the finding ("not responding").

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot

public enum ControlSocket {
    public static let path = "/run/outpost/control.sock"
    static let ioTimeoutSeconds = 5

    static func spec(agent: Agent) -> ComponentSpec {
        ComponentSpec(name: "control", livenessDeadlineMilliseconds: 30_000, body: .task { context in
            try context.beat()
            let listener = try listen(at: path)
            defer { Sys.close(listener) }
            while !context.isStopping {
                var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
                let ready = try pollDescriptors(&fds, timeout: .seconds(5), object: path)
                try context.beat()
                guard ready > 0 else { continue }
                // accept4 is a GNU extension Swift's Glibc module hides; the
                // listener is non-inheritable, and a helper spawned in the gap
                // before FD_CLOEXEC would only hold a copy until it execs.
                let client = accept(listener, nil, nil)
                guard client >= 0 else { continue }
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                serve(client, agent: agent)
            }
        })
    }

    static func serve(_ client: Int32, agent: Agent) {
        defer { Sys.close(client) }
        setTimeouts(client)
        let request = readAll(client, limit: 256).split(separator: "\n").first.map { $0.trimmingSpaces() } ?? ""
        let report = StatusReport(agent: agent)
        let reply: String
        switch request {
        case "status": reply = report.text()
        case "status --json": reply = report.json()
        case let r where r.hasPrefix("reboot-update "):
            // `outpostd update apply` installed a bundle into this slot: restart into it.
            let slot = String(r.dropFirst("reboot-update ".count))
            agent.supervisor.requestShutdown(ShutdownRequest(reason: .update, powerOff: false, component: "update",
                                                             expectedSlot: slot, detail: "booting the update in \(slot)"))
            reply = "ok: restarting into \(slot)\n"
        default: reply = "error: unknown request '\(request)'\n"
        }
        try? Sys.writeAll(client, Array(reply.utf8), target: path)
    }

    /// Binds and listens, replacing a stale socket file from this boot's past.
    static func listen(at path: String) throws(SystemError) -> Int32 {
        try Sys.mkdir("/run/outpost", 0o700)
        _ = unlink(path)
        let fd = try systemCall("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do throws(SystemError) {
            _ = try withAddress(path) { address, length throws(SystemError) in
                try systemCall("bind", path) { bind(fd, address, length) }
            }
            _ = chmod(path, 0o600)
            try systemCall("listen", path) { Glibc.listen(fd, 4) }
        } catch {
            Sys.close(fd)
            throw error
        }
        return fd
    }

    /// Client side: one request, the whole reply.
    public static func request(_ line: String, path: String = path) throws(SystemError) -> String {
        let fd = try systemCall("socket", path) { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        defer { Sys.close(fd) }
        setTimeouts(fd)
        _ = try withAddress(path) { address, length throws(SystemError) in
            try systemCall("connect", path) { connect(fd, address, length) }
        }
        try Sys.writeAll(fd, Array((line + "\n").utf8), target: path)
        _ = shutdown(fd, Int32(SHUT_WR))
        return readAll(fd, limit: 1 << 20)
    }

    static func readAll(_ fd: Int32, limit: Int) -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let count = (try? systemCall("read", "control connection") {
                chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            }) ?? 0
            guard count > 0 else { break }
            bytes += chunk[0..<count]
            if bytes.contains(UInt8(ascii: "\n")) && limit <= 256 { break }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func setTimeouts(_ fd: Int32) {
        var timeout = timeval(tv_sec: ioTimeoutSeconds, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    static func withAddress<T>(_ path: String,
                               _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemError) -> T)
        throws(SystemError) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw SystemError(call: "bind", object: path, code: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return try withUnsafePointer(to: &address) { pointer throws(SystemError) -> T in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address throws(SystemError) -> T in
                try body(address, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
