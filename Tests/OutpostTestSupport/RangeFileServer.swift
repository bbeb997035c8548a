import Foundation

/// A loopback HTTP/1.1 file server (python3) that honours `Range: bytes=N-`, which python's own
/// http.server does not. It serves the files of `root`; with `cutAfter` the first GET of each
/// path is cut after that many body bytes (the connection is shut down mid-body), so a client
/// must resume. Every request is appended to `log` as "PATH RANGE-OR-DASH". Killed by PID when dropped.
public final class RangeFileServer {
    static let script = #"""
    import http.server, socketserver, sys, os, socket, threading
    root, cut_after, log, lifetime, port_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    seen = set()
    lock = threading.Lock()
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'
        def log_message(self, *a): pass
        def do_GET(self):
            rng = self.headers.get('Range')
            with lock:
                with open(log, 'a') as f: f.write('%s %s\n' % (self.path, rng or '-'))
                first = self.path not in seen
                seen.add(self.path)
            path = os.path.join(root, self.path.lstrip('/'))
            if not os.path.isfile(path):
                self.send_response(404); self.send_header('Content-Length', '0'); self.end_headers(); return
            data = open(path, 'rb').read()
            start = 0
            if rng:
                start = int(rng.split('=')[1].split('-')[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header('Content-Range', 'bytes */%d' % len(data))
                    self.send_header('Content-Length', '0'); self.end_headers(); return
                self.send_response(206)
                self.send_header('Content-Range', 'bytes %d-%d/%d' % (start, len(data) - 1, len(data)))
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            if first and cut_after >= 0:
                self.wfile.write(body[:cut_after]); self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)
    class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
    srv = S(('127.0.0.1', 0), H)
    with open(port_file + '.tmp', 'w') as f: f.write(str(srv.server_address[1]))
    os.rename(port_file + '.tmp', port_file)
    threading.Timer(lifetime, lambda: srv.shutdown()).start()
    srv.serve_forever()
    """#

    private let server: PythonServer
    public var port: Int { server.port }
    /// One line per request: the path and the Range header ("-" when there was none).
    public let log: String

    /// `cutAfter`: nil serves every request whole. The server ends itself after `lifetime`
    /// seconds even if this object is never dropped (a QEMU test serving a booting guest needs minutes).
    public init(root: String, cutAfter: Int? = nil, lifetime: Int = 120) throws {
        let name = "range-server-\(UInt32.random(in: 0...UInt32.max)).py"
        log = root + "/" + name + ".log"
        server = try PythonServer(script: Self.script, in: root, name: name, arguments: [root, String(cutAfter ?? -1), log, String(lifetime)])
    }

    /// The requests served so far, as (path, range header or nil).
    public func requests() -> [(path: String, range: String?)] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map { line in
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            let range = parts.count > 1 && parts[1] != "-" ? parts[1] : nil
            return (parts.first ?? "", range)
        }
    }
}
