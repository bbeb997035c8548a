import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostNetwork

/// Enterprise networks (a port whose only way out is an HTTP proxy) and stable names by MAC.
extension FailoverTests {
    private static let proxyScript = ConnectProxy.scriptPath

    /// Starts the CONNECT proxy in wlan0's upstream and waits (bounded) until it listens.
    private func startProxy(_ net: NamespaceHarness, port: Int, deny: Bool) throws -> (ChildProcess, String) {
        let log = net.workDir + "/proxy-\(port).log"
        let proxy = try ChildProcess(["/usr/sbin/ip", "netns", "exec", net.upstream("wlan0"), "python3", Self.proxyScript,
                                      "--listen", "10.2.0.1:\(port)", "--log", log] + (deny ? ["--deny"] : []))
        guard NamespaceHarness.waitUntil(.seconds(10), every: 0.05, {
            (try? String(contentsOfFile: log, encoding: .utf8))?.contains("listening") == true
        }) != nil else {
            proxy.terminate()
            throw HarnessError.timeout("proxy on \(port)")
        }
        return (proxy, log)
    }

    private static func proxiedConfig(_ proxyPort: Int) -> String {
        NamespaceHarness.staticConfig.replacingOccurrences(of: #""cost": 20 }"#,
                                                           with: #""cost": 20, "proxy": "http://10.2.0.1:\#(proxyPort)", "pac": "http://10.2.0.1/proxy.pac" }"#)
    }

    @Test func probeThroughAPortsHTTPProxyUsesCONNECTAndAProxyRefusalIsReported() throws {
        let net = try NamespaceHarness(dhcpOn: [])
        defer { net.tearDown() }
        try net.setCarrier("eth0", false)
        let (good, goodLog) = try startProxy(net, port: 3128, deny: false)
        defer { good.terminate() }
        let (bad, _) = try startProxy(net, port: 3129, deny: true)
        defer { bad.terminate() }

        let manager = try net.manager(holdDown: .seconds(1), config: Self.proxiedConfig(3128))
        try manager.start()
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "wlan0" } != nil)
        manager.stop()
        let log = try String(contentsOfFile: goodLog, encoding: .utf8)
        #expect(log.contains("CONNECT 10.200.0.1:8080 HTTP/1.1"), "\(log)")

        let refused = try net.manager(holdDown: .seconds(1), config: Self.proxiedConfig(3129))
        try refused.start()
        defer { refused.stop() }
        let error = NamespaceHarness.waitUntil(.seconds(5)) { refused.snapshot().lastProbeError["wlan0"] != nil }
        #expect(error != nil)
        let message = refused.snapshot().lastProbeError["wlan0"] ?? ""
        #expect(message == "probe: proxy 10.2.0.1:3129 refused CONNECT: 'HTTP/1.1 403 Forbidden'", "\(message)")
        #expect(refused.snapshot().active == nil)
    }

    @Test func proxyAndPACAreShownInStatusAndConsoleReport() throws {
        let net = try NamespaceHarness(dhcpOn: [])
        defer { net.tearDown() }
        let (proxy, _) = try startProxy(net, port: 3128, deny: false)
        defer { proxy.terminate() }
        let service = try net.service(bootstrap: Self.proxiedConfig(3128))
        try service.start()
        defer { service.stop() }
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { service.activePort == "eth0" } != nil)
        let report = service.connectivityReport()
        #expect(report.contains { $0.hasPrefix("wlan0:") && $0.contains("proxy http://10.2.0.1:3128") && $0.contains("pac http://10.2.0.1/proxy.pac (the static proxy wins)") },
                "\(report)")
        #expect(service.statusJSON().contains(#""pac":"http://10.2.0.1/proxy.pac""#))
    }

    @Test func aPortsPACFileIsFetchedThroughThePortAndItsProxyIsUsed() throws {
        let net = try NamespaceHarness(dhcpOn: [])
        defer { net.tearDown() }
        try net.setCarrier("eth0", false)
        let (proxy, log) = try startProxy(net, port: 3128, deny: false)
        defer { proxy.terminate() }
        // Served by wlan0's upstream web server (10.2.0.1:8080): the probe target goes through the proxy.
        try Data("""
        function FindProxyForURL(url, host) {
            if (isInNet(host, "10.200.0.0", "255.255.0.0") && shExpMatch(url, "http://*/id"))
                return "PROXY 10.2.0.1:3128; DIRECT";
            return "DIRECT";
        }
        """.utf8).write(to: URL(fileURLWithPath: net.workDir + "/wlan0-side/proxy.pac"))
        let config = NamespaceHarness.staticConfig.replacingOccurrences(
            of: #""cost": 20 }"#, with: #""cost": 20, "pac": "http://10.2.0.1:8080/proxy.pac" }"#)
        let manager = try net.manager(holdDown: .seconds(1), config: config)
        try manager.start()
        defer { manager.stop() }
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { manager.snapshot().active == "wlan0" } != nil,
                "\(manager.snapshot().lastProbeError)")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("CONNECT 10.200.0.1:8080 HTTP/1.1"), "the PAC's proxy was not used: \(text)")

        // A PAC outside the supported subset: the port is not usable, and the report says why.
        try Data("function FindProxyForURL(url, host) { return dnsResolve(host); }".utf8)
            .write(to: URL(fileURLWithPath: net.workDir + "/wlan0-side/proxy.pac"))
        let refused = try net.manager(holdDown: .seconds(1), config: config)
        manager.stop()
        try refused.start()
        defer { refused.stop() }
        #expect(NamespaceHarness.waitUntil(.seconds(5)) { refused.snapshot().lastProbeError["wlan0"] != nil } != nil)
        let message = refused.snapshot().lastProbeError["wlan0"] ?? ""
        #expect(message.contains("pac: line 1: the function 'dnsResolve' is not supported"), "\(message)")
        #expect(refused.snapshot().active == nil)
    }

    @Test func linkWithTheConfiguredMACIsRenamedToItsPortName() throws {
        let net = try NamespaceHarness(dhcpOn: ["eth0", "wlan0"], deviceNames: ["eth0": "ens3"])
        defer { net.tearDown() }
        let link = try sh("ip", "-n", net.device, "link", "show", "ens3")
        let mac = try #require(link.split(separator: " ").drop { $0 != "link/ether" }.dropFirst().first.map(String.init))
        let config = NamespaceHarness.dhcpConfig(extra: ["eth0": #""mac": "\#(mac.uppercased())""#])
        let manager = try net.manager(holdDown: .seconds(1), config: config)
        try manager.start()
        defer { manager.stop() }
        #expect(manager.snapshot().renamed == ["eth0": "ens3"])
        #expect(try sh("ip", "-n", net.device, "link", "show", "eth0").contains(mac))
        #expect((try? sh("ip", "-n", net.device, "link", "show", "ens3")) == nil)
        #expect(NamespaceHarness.waitUntil(.seconds(10)) { manager.snapshot().active == "eth0" } != nil)
        #expect(net.probeViaDefaultRoute(timeout: .milliseconds(500)) == "eth0-side")
    }
}
