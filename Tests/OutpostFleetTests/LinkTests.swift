import Foundation
import OutpostTestSupport
import OutpostHTTP
import OutpostPlatform
import Testing
@testable import OutpostFleet

/// A TLS server (python3's ssl) with the test PKI's server certificate for
/// 127.0.0.1 (issued by the test controller CA), requiring a client certificate it trusts through
/// `clientTrust`, answering every POST with the client certificate's CN.
private final class EchoServer {
    static let script = #"""
    import http.server, socketserver, ssl, sys, threading
    import os
    cert, key, trust, port_file = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'
        def log_message(self, *a): pass
        def do_POST(self):
            self.rfile.read(int(self.headers.get('Content-Length', '0')))
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
    ctx.load_verify_locations(trust)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(port_file + '.tmp', 'w') as f: f.write(str(srv.server_address[1]))
    os.rename(port_file + '.tmp', port_file)
    threading.Timer(60, lambda: srv.shutdown()).start()
    srv.serve_forever()
    """#

    let process: ChildProcess
    let port: Int

    init(dir: String, pki: TestPKI, clientTrust: String) throws {
        let script = dir + "/echo.py"
        try Self.script.write(toFile: script, atomically: true, encoding: .utf8)
        let child = try ChildProcess(["python3", script, pki.cert, pki.key, clientTrust, script + ".port"])
        process = child
        // The server writes its port to a file once it listens (renamed into place).
        var port: Int?
        do {
            try waitFor("echo server listening", within: .seconds(20)) {
                port = (try? String(contentsOfFile: script + ".port", encoding: .utf8)).flatMap { Int($0) }
                return port != nil || !child.isRunning
            }
        } catch {
            child.kill()
            throw error
        }
        guard let port else {
            child.kill()
            throw TestSupportError.spawn(command: "python3 echo.py", reason: "exited before it listened")
        }
        self.port = port
    }

    deinit { process.kill() }
}

@Suite("Fleet: controller link over mutual TLS")
struct LinkTests {
    @Test func deviceCertificateIsPresentedAndABrokenRouteFallsThroughToTheNext() throws {
        let tmp = try TemporaryDirectory("link")
        let (configuration, pki) = try makeConfigAndPKI(tmp.path, url: "https://127.0.0.1:9/")
        let identity = try SoftwareIdentity.loadOrCreate(directory: tmp.path + "/fleet", serial: "SN-LINK")
        // The server trusts exactly the device's self-signed certificate.
        let server = try EchoServer(dir: tmp.path, pki: pki, clientTrust: tmp.path + "/fleet/device.cert.pem")
        let url = try HTTPURL("https://127.0.0.1:\(server.port)/")
        let routes: [ControllerRoute] = [ControllerRoute(device: "nosuchport0"), .direct]
        let link = ControllerLink(baseURL: url, routes: { routes }, connectTimeout: .seconds(5), callTimeout: .seconds(10))
        let tls = try identity.tlsContext(trusting: [configuration.rootCAFile])
        let answer = try link.call(APIPath.ping, body: [1, 2, 3], tls: tls)
        #expect(answer.status == 200)
        #expect(String(decoding: answer.body, as: UTF8.self) == "SN-LINK")
        #expect(link.currentRoute == .direct)
        #expect(link.lastAnswered != nil)
        // The route that worked is tried first next time.
        #expect(link.orderedRoutes().first == .direct)

        // The onboarding certificate is not what this server trusts: refused
        // in the handshake, one line naming the endpoint.
        let onboarding = try TLSContext(caFiles: [configuration.rootCAFile], systemDefaults: false,
                                        client: TLSClientCertificate(certificatePEM: configuration.onboardingCertificatePEM,
                                                                     privateKeyPEM: configuration.onboardingKeyPEM, label: "onboarding"))
        do {
            _ = try link.call(APIPath.register, tls: onboarding)
            Issue.record("a certificate the server does not trust was accepted")
        } catch {
            #expect(error.description.contains(APIPath.register) && !error.description.contains("\n"), "\(error)")
        }

        // A server certificate from another CA is refused by the device.
        let distrusting = try identity.tlsContext(trusting: [pki.otherCA])
        do {
            _ = try link.call(APIPath.ping, tls: distrusting)
            Issue.record("a controller from another CA was trusted")
        } catch {
            #expect(error.description.contains("not trusted") || error.description.contains("certificate"), "\(error)")
        }
    }

    @Test func metricsFromThisHostHaveMemoryUptimeAndPorts() {
        let collector = MetricsCollector(persistPath: "/")
        _ = collector.sample(watchdog: nil)
        let sample = collector.sample(watchdog: nil)
        #expect(sample.memoryTotalBytes > 0 && sample.memoryUsedBytes <= sample.memoryTotalBytes)
        #expect(sample.uptimeS > 0)
        #expect(sample.persistTotalBytes > 0)
        #expect(sample.cpuPercent >= 0 && sample.cpuPercent <= 100)
        #expect(!sample.ports.contains { $0.name == "lo" })
    }
}
