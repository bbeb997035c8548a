import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostHTTP

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// The test web server (python3's http.server), started and killed by PID.
/// It serves `payload` at every path; `/chunked` answers with chunked
/// encoding; Range requests get 206; with `cutFirst` the first transfer is cut
/// at 40%. With a certificate it speaks TLS. It counts body bytes and
/// requests in `counter` ("SENT REQUESTS"), and tunnels CONNECT when `proxy`.
final class TestServer {
    static let script = #"""
    import http.server, socketserver, ssl, sys, socket, threading, select, os
    mode, payload, counter = sys.argv[1], sys.argv[2], sys.argv[3]
    cert = sys.argv[4] if len(sys.argv) > 5 else None
    key = sys.argv[5] if len(sys.argv) > 5 else None
    data = open(payload, 'rb').read() if payload != '-' else b''
    state = {'sent': 0, 'requests': 0}
    def record():
        open(counter, 'w').write('%d %d' % (state['sent'], state['requests']))
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'
        def log_message(self, *a): pass
        def do_GET(self):
            state['requests'] += 1
            if self.path == '/chunked':
                self.send_response(200)
                self.send_header('Transfer-Encoding', 'chunked')
                self.end_headers()
                step = 1000
                for i in range(0, len(data), step):
                    part = data[i:i + step]
                    self.wfile.write(b'%x\r\n' % len(part) + part + b'\r\n')
                self.wfile.write(b'0\r\n\r\n')
                state['sent'] += len(data)
                record()
                return
            rng = self.headers.get('Range')
            start = int(rng.split('=')[1].split('-')[0]) if rng else 0
            body = data[start:]
            if rng:
                self.send_response(206)
                self.send_header('Content-Range', 'bytes %d-%d/%d' % (start, len(data) - 1, len(data)))
            else:
                self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            cut = mode == 'cut' and state['requests'] == 1
            if cut:
                body = body[:len(data) * 4 // 10]
            self.wfile.write(body)
            self.wfile.flush()
            state['sent'] += len(body)
            record()
            if cut:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
        def do_CONNECT(self):
            state['requests'] += 1
            record()
            host, port = self.path.rsplit(':', 1)
            upstream = socket.create_connection((host, int(port)), timeout=10)
            self.send_response(200, 'Connection established')
            self.end_headers()
            a, b = self.connection, upstream
            for _ in range(100000):
                r, _, _ = select.select([a, b], [], [], 10)
                if not r: break
                done = False
                for s in r:
                    chunk = s.recv(65536)
                    if not chunk: done = True; break
                    (b if s is a else a).sendall(chunk)
                if done: break
            upstream.close()
            self.close_connection = True
    class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
    srv = S(('127.0.0.1', 0), H)
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    open(counter + '.port.tmp', 'w').write(str(srv.server_address[1]))
    os.rename(counter + '.port.tmp', counter + '.port')
    srv.timeout = 30
    threading.Timer(120, lambda: srv.shutdown()).start()
    srv.serve_forever()
    """#

    private let server: PythonServer
    var port: Int { server.port }
    let counter: String

    /// mode: "serve" or "cut" (the first transfer stops at 40%).
    init(dir: String, mode: String, payload: String, tls: TestPKI? = nil) throws {
        let name = "server-\(UInt32.random(in: 0...UInt32.max)).py"
        counter = dir + "/" + name + ".count"
        server = try PythonServer(script: Self.script, in: dir, name: name,
                                  arguments: [mode, payload, counter] + (tls.map { [$0.cert, $0.key] } ?? []),
                                  portFile: counter + ".port")
    }

    /// (body bytes sent, requests served) so far.
    func counted() throws -> (sent: UInt64, requests: Int) {
        let parts = try String(contentsOfFile: counter, encoding: .utf8).split(separator: " ")
        guard parts.count == 2, let sent = UInt64(parts[0]), let requests = Int(parts[1]) else { throw TestFailure("counter '\(parts)'") }
        return (sent, requests)
    }
}

/// A deterministic payload of `count` bytes.
func testPayload(_ count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
    return bytes
}

/// A one-shot in-process TCP server on 127.0.0.1 that answers any request
/// with `reply` and closes: malformed responses on demand.
final class CannedServer: Sendable {
    let fd: Int32
    let port: Int
    private let done = DispatchSemaphore(value: 0)

    init(reply: [UInt8]) throws {
        let sock = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        fd = sock
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(sock, sa, length) == 0 && listen(sock, 4) == 0 && getsockname(sock, sa, &length) == 0
            }
        }
        guard ok else { close(sock); throw TestFailure("canned server: errno \(errno)") }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let done = self.done
        Thread {
            let fd = sock
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let client = accept(fd, nil, nil)
            if client >= 0 {
                var request = [UInt8](repeating: 0, count: 4096)
                _ = recv(client, &request, request.count, 0)
                _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(client)
            }
            done.signal()
        }.start()
    }

    deinit {
        _ = done.wait(timeout: .now() + 6)
        close(fd)
    }
}
