import Foundation
import OutpostTestSupport
import Testing
import OutpostHTTP
@testable import OutpostNetwork

/// A small HTTPS endpoint plays the controller: every upstream namespace runs a python3 TLS
/// server on 10.200.0.1:8443 with a certificate for that address, signed by a CA the test
/// makes with the openssl CLI. Failover works over https probes, and a device that does not
/// trust the endpoint's CA never calls a port usable and says why.
extension FailoverTests {
    static let tlsServer = #"""
    import http.server, ssl, sys, os
    cert, key, directory, ready = sys.argv[1:5]
    os.chdir(directory)
    class H(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(('10.200.0.1', 8443), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    # Handshake in each connection's own thread (on its first read), not inside accept():
    # a client that vanished mid-handshake (its port's carrier cut) must not stall the rest.
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    open(ready, 'w').write('listening')
    srv.serve_forever()
    """#

    @Test func anHTTPSControllerEndpointIsProbedThroughEachPortAndAnUntrustedOneIsNot() throws {
        let net = try NamespaceHarness()
        defer { net.tearDown() }
        let pki = try TestPKI(dir: net.workDir, serverName: "10.200.0.1")
        let script = net.workDir + "/tls-server.py"
        try Data(Self.tlsServer.utf8).write(to: URL(fileURLWithPath: script))
        var servers: [ChildProcess] = []
        defer { servers.forEach { $0.terminate() } }
        for port in NamespaceHarness.ports {
            let ready = "\(net.workDir)/\(port)-tls.ready"
            servers.append(try ChildProcess(["/usr/sbin/ip", "netns", "exec", net.upstream(port), "python3", script,
                                             pki.cert, pki.key, "\(net.workDir)/\(port)-side", ready]))
            #expect(NamespaceHarness.waitUntil(.seconds(10), every: 0.05) { FileManager.default.fileExists(atPath: ready) } != nil)
        }
        let url = "https://10.200.0.1:8443/id"
        let config = NamespaceHarness.dhcpConfig().replacingOccurrences(of: NamespaceHarness.probeURL, with: url)

        var options = net.options(holdDown: .seconds(1))
        options.probeTLS = try TLSContext(caFiles: [pki.ca], systemDefaults: false)
        let manager = NetworkManager(config: try NetworkConfig(json: Data(config.utf8)), options: options)
        try manager.start()
        #expect(NamespaceHarness.waitUntil(.seconds(15)) { manager.snapshot().active == "eth0" } != nil,
                "\(manager.snapshot().lastProbeError)")
        let target = try HTTPURL(url)
        let tls = options.probeTLS
        func viaDefaultRoute() -> String? {
            try? NetworkNamespace.run(net.device) { try HTTPProbe.get(target, device: nil, tls: tls, timeout: .milliseconds(300)) }
        }
        #expect(viaDefaultRoute() == "eth0-side")

        // eth0's carrier drops: the route moves and the HTTPS endpoint answers through wlan0. How
        // fast is FailoverTests' and bench/failover.sh's business; eth0 came up moments ago, so
        // the kernel may report this cut up to a second late (see benchmarkCarrierCuts).
        try net.setCarrier("eth0", false)
        let moved = NamespaceHarness.waitUntil(.seconds(5), every: 0.01) { viaDefaultRoute() == "wlan0-side" }
        #expect(moved != nil, "no HTTPS answer through wlan0 within 5 s: \(manager.snapshot().lastProbeError)")
        print("https probe: carrier drop → HTTPS answer through wlan0 after \(moved.map { "\($0)" } ?? "never")")
        manager.stop()

        // The same endpoint, but the device trusts another CA: no port is usable, and status says why.
        try net.setCarrier("eth0", true)
        options.probeTLS = try TLSContext(caFiles: [pki.otherCA], systemDefaults: false)
        let distrusting = NetworkManager(config: try NetworkConfig(json: Data(config.utf8)), options: options)
        try distrusting.start()
        defer { distrusting.stop() }
        let reported = NamespaceHarness.waitUntil(.seconds(15)) { distrusting.snapshot().lastProbeError["eth0"] != nil }
        #expect(reported != nil)
        let message = distrusting.snapshot().lastProbeError["eth0"] ?? ""
        #expect(message.contains("certificate not trusted"), "\(message)")
        #expect(distrusting.snapshot().active == nil)
    }
}
