// One DNS question over UDP, for AppNetwork's host-name refresh. The answer's
// content does not matter here: dnsmasq fills the host rules' sets as it answers.
//
//   header  id(2) flags(2: RD) qdcount(2)=1 ancount(2) nscount(2) arcount(2)
//   question  labels (length byte + bytes)... 0, qtype(2)=A, qclass(2)=IN

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import OutpostPlatform

enum DNSQuery {
    /// The question for `name`'s A records with `id`; nil for a name that cannot be encoded.
    static func question(_ name: String, id: UInt16) -> [UInt8]? {
        var bytes: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xff), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            let text = Array(label.utf8)
            guard !text.isEmpty, text.count <= 63 else { return nil }
            bytes.append(UInt8(text.count))
            bytes += text
        }
        bytes += [0, 0, 1, 0, 1]
        return bytes.count <= 512 ? bytes : nil
    }

    /// Sends the question to `server` (4 address bytes) port 53 and waits at most `timeout` for
    /// its reply; true when the reply has the question's id, no error and at least one answer.
    static func resolves(_ name: String, server: [UInt8], timeout: Duration) -> Bool {
        let id = UInt16.random(in: 1...UInt16.max)
        guard server.count == 4, let query = question(name, id: id) else { return false }
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { _ = close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(53).bigEndian
        withUnsafeMutableBytes(of: &address.sin_addr) { $0.copyBytes(from: server) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0, send(fd, query, query.count, 0) == query.count else { return false }
        let deadline = Deadline(after: timeout)
        var reply = [UInt8](repeating: 0, count: 1500)
        while !deadline.hasPassed {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            guard let ready = try? pollDescriptors(&fds, timeout: deadline.remaining, object: "dns \(name)"), ready > 0 else { return false }
            let count = recv(fd, &reply, reply.count, 0)
            guard count >= 12 else { return false }
            // Another reply (a late one to an earlier question) is skipped; ours decides.
            guard reply[0] == UInt8(id >> 8), reply[1] == UInt8(id & 0xff) else { continue }
            let rcode = reply[3] & 0x0f
            let answers = Int(reply[6]) << 8 | Int(reply[7])
            return rcode == 0 && answers > 0
        }
        return false
    }
}
