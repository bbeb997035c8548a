// Loopback TCP ports for the servers the host side starts (swtpm for `outpost run`, the
// test suites' controllers and proxies). Only 127.0.0.1 is ever bound or connected to.

#if canImport(Glibc)
import Glibc
#endif

public enum LoopbackPort {
    /// A port on 127.0.0.1 that nothing listens on now (bound to port 0, read back,
    /// closed), for a server started next; nil when no socket could be bound.
    public static func free() -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var address = loopback(port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        return bound ? Int(UInt16(bigEndian: address.sin_port)) : nil
    }

    /// A port P with P+1 free too (swtpm's TCP TCTI puts its control channel on P+1);
    /// nil after 50 tries.
    public static func freePair() -> Int? {
        for _ in 0..<50 {
            guard let port = free() else { return nil }
            if port < 65535 && !accepts(port + 1) && canBind(port + 1) { return port }
        }
        return nil
    }

    /// Whether something listens on 127.0.0.1:`port`.
    public static func accepts(_ port: Int) -> Bool { onLoopback(port) { connect($0, $1, $2) } }

    /// Whether 127.0.0.1:`port` can be bound now.
    public static func canBind(_ port: Int) -> Bool { onLoopback(port) { bind($0, $1, $2) } }

    static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    /// Calls `call` (connect or bind) on a new TCP socket with 127.0.0.1:`port`; true when it succeeds.
    private static func onLoopback(_ port: Int, _ call: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = loopback(port: port)
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
