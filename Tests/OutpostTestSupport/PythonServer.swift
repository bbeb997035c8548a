import Foundation
import OutpostProcess

/// A python3 server started from a script the test writes, which announces the port it listens
/// on by writing it to a port file (written aside and renamed into place, never half-read).
/// Killed by PID when dropped.
public final class PythonServer {
    public let process: ChildProcess
    public let port: Int

    /// Writes `script` to `dir/name`, runs `python3 dir/name ARGUMENTS... PORTFILE` (the port
    /// file's path is the last argument unless `portFile` is given and already among them) and
    /// waits up to 20 s for the port.
    public convenience init(script: String, in dir: String, name: String, arguments: [String], portFile: String? = nil) throws {
        let path = dir + "/" + name
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        try self.init(scriptPath: path, arguments: arguments, portFile: portFile)
    }

    /// Runs the script at `scriptPath` the same way.
    public init(scriptPath path: String, arguments: [String], portFile: String? = nil) throws {
        let name = URL(fileURLWithPath: path).lastPathComponent
        let portPath = portFile ?? path + ".port"
        let child = try ChildProcess(["python3", path] + arguments + (portFile == nil ? [portPath] : []))
        process = child
        var port: Int?
        do {
            try waitFor("\(name) listening", within: .seconds(20)) {
                port = (try? String(contentsOfFile: portPath, encoding: .utf8)).flatMap { Int($0) }
                return port != nil || !child.isRunning
            }
        } catch {
            child.kill()
            throw error
        }
        guard let port else {
            child.kill()
            throw TestSupportError.spawn(command: "python3 \(name)", reason: "exited before it listened")
        }
        self.port = port
    }

    deinit { process.kill() }
}

/// A TLS server (python3's ssl) on 127.0.0.1 with `pki`'s server certificate, which requires a
/// client certificate it trusts through `clientTrust` (a CA or the client's own certificate)
/// and answers every GET and POST with that certificate's subject CN.
public final class MutualTLSEchoServer {
    static let script = #"""
    import http.server, socketserver, ssl, sys, threading, os
    cert, key, trust, port_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'
        def log_message(self, *a): pass
        def answer(self):
            self.rfile.read(int(self.headers.get('Content-Length', '0')))
            subject = dict(x[0] for x in self.connection.getpeercert()['subject'])
            body = subject.get('commonName', '').encode()
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = answer
        do_POST = answer
    class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
    srv = S(('127.0.0.1', 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(trust)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(port_file + '.tmp', 'w') as f: f.write(str(srv.server_address[1]))
    os.rename(port_file + '.tmp', port_file)
    threading.Timer(60, lambda: srv.shutdown()).start()
    srv.serve_forever()
    """#

    private let server: PythonServer
    public var port: Int { server.port }

    public init(dir: String, pki: TestPKI, clientTrust: String) throws {
        server = try PythonServer(script: Self.script, in: dir, name: "mtls-echo.py", arguments: [pki.cert, pki.key, clientTrust])
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now (bound to port 0, read back, closed),
/// for a server the test starts next.
public func freeLoopbackPort() throws -> Int {
    guard let port = LoopbackPort.free() else {
        throw TestSupportError.spawn(command: "bind 127.0.0.1:0", reason: String(cString: strerror(errno)))
    }
    return port
}
