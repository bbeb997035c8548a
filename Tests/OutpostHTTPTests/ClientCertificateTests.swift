import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostHTTP

/// A TLS server (python3's ssl) that requires a client certificate issued by
/// `clientCA` and answers every GET with the client's subject CN.
private final class MutualTLSServer {
    static let script = #"""
    import http.server, socketserver, ssl, sys, threading
    import os
    cert, key, client_ca, port_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'
        def log_message(self, *a): pass
        def do_GET(self):
            subject = dict(x[0] for x in self.connection.getpeercert()['subject'])
            body = subject.get('commonName', '').encode()
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
    srv = S(('127.0.0.1', 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(client_ca)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(port_file + '.tmp', 'w') as f: f.write(str(srv.server_address[1]))
    os.rename(port_file + '.tmp', port_file)
    threading.Timer(60, lambda: srv.shutdown()).start()
    srv.serve_forever()
    """#

    let process: ChildProcess
    let port: Int

    init(dir: String, pki: TestPKI, clientCA: String) throws {
        let script = dir + "/mtls.py"
        try Self.script.write(toFile: script, atomically: true, encoding: .utf8)
        let child = try ChildProcess(["python3", script, pki.cert, pki.key, clientCA, script + ".port"])
        process = child
        // The server writes its port to a file once it listens (renamed into place).
        var port: Int?
        do {
            try waitFor("mutual TLS server listening", within: .seconds(20)) {
                port = (try? String(contentsOfFile: script + ".port", encoding: .utf8)).flatMap { Int($0) }
                return port != nil || !child.isRunning
            }
        } catch {
            child.kill()
            throw error
        }
        guard let port else {
            child.kill()
            throw TestFailure("mutual TLS server exited before it listened")
        }
        self.port = port
    }

    deinit { process.kill() }
}

@Suite("HTTP client: client certificates (mutual TLS)")
struct ClientCertificateTests {
    /// A client certificate for CN=device-7 issued by the test CA.
    static func clientCertificate(_ pki: TestPKI, name: String = "device-7") throws -> TLSClientCertificate {
        let (cert, key) = try pki.clientCertificate(name)
        return TLSClientCertificate(certificatePEM: try String(contentsOfFile: cert, encoding: .utf8),
                                    privateKeyPEM: try String(contentsOfFile: key, encoding: .utf8),
                                    label: name)
    }

    @Test func serverThatRequiresACertificateSeesTheClientsName() throws {
        let tmp = try TemporaryDirectory("mtls")
        let pki = try TestPKI(dir: tmp.path)
        let server = try MutualTLSServer(dir: tmp.path, pki: pki, clientCA: pki.ca)
        let url = try HTTPURL("https://127.0.0.1:\(server.port)/who")

        var options = HTTPOptions()
        options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false, client: try Self.clientCertificate(pki))
        let (status, body) = try HTTPClient.get(url, options: options)
        #expect(status == 200)
        #expect(String(decoding: body, as: UTF8.self) == "device-7")

        // Without a certificate the same server refuses the handshake.
        options.tls = try TLSContext(caFiles: [pki.ca], systemDefaults: false)
        #expect(throws: HTTPError.self) { _ = try HTTPClient.get(url, options: options) }
    }

    @Test func keyThatDoesNotMatchTheCertificateIsRefusedAtSetup() throws {
        let tmp = try TemporaryDirectory("mtls-mismatch")
        let pki = try TestPKI(dir: tmp.path)
        let one = try Self.clientCertificate(pki, name: "one")
        let two = try Self.clientCertificate(pki, name: "two")
        let crossed = TLSClientCertificate(certificatePEM: one.certificatePEM, privateKeyPEM: two.privateKeyPEM, label: "crossed")
        do {
            _ = try TLSContext(caFiles: [pki.ca], systemDefaults: false, client: crossed)
            Issue.record("a mismatched key was accepted")
        } catch {
            // OpenSSL itself finds the mismatch ("key values mismatch") when the key is set.
            #expect(error.description.contains("does not match") || error.description.contains("mismatch"), "\(error)")
            #expect(error.description.contains("crossed"), "\(error)")
        }
        let garbage = TLSClientCertificate(certificatePEM: "not a pem", privateKeyPEM: two.privateKeyPEM, label: "garbage")
        #expect(throws: HTTPError.self) { _ = try TLSContext(caFiles: [pki.ca], systemDefaults: false, client: garbage) }
    }
}
