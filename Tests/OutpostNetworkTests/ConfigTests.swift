import Foundation
import OutpostHTTP
import Testing
@testable import OutpostNetwork

let goodConfig = """
{ "ports": {
    "eth0":  { "mode": "static", "address": "10.1.0.2/24", "gateway": "10.1.0.1", "dns": ["10.1.0.53"], "cost": 10 },
    "wlan0": { "mode": "static", "address": "10.2.0.2/24", "gateway": "10.2.0.1", "dns": ["10.2.0.53"], "cost": 20,
               "proxy": "http://proxy.example:3128" },
    "wwan0": { "mode": "dhcp", "cost": 100 } } }
"""

@Test func staticAndDhcpPortsParseWithCostOrder() throws {
    let config = try NetworkConfig(json: Data(goodConfig.utf8))
    #expect(config.portsByPreference.map(\.name) == ["eth0", "wlan0", "wwan0"])
    let wlan = try #require(config.ports.first { $0.name == "wlan0" })
    #expect(wlan.proxy == (try HTTPURL("http://proxy.example:3128")))
    #expect(wlan.proxy?.host == "proxy.example" && wlan.proxy?.port == 3128)
    #expect(wlan.mode == .staticAddress(address: IPv4("10.2.0.2")!, prefixLength: 24, gateway: IPv4("10.2.0.1")!, dns: [IPv4("10.2.0.53")!]))
    #expect(config.ports.first { $0.name == "wwan0" }?.mode == .dhcp)
}

@Test(arguments: [
    (#"{"ports": {"eth0": {"mode": "static", "address": "10.1.0.300/24", "gateway": "10.1.0.1", "cost": 1}}}"#, "ports.eth0.address"),
    (#"{"ports": {"eth0": {"mode": "static", "address": "10.1.0.2", "gateway": "10.1.0.1", "cost": 1}}}"#, "ports.eth0.address"),
    (#"{"ports": {"eth0": {"mode": "static", "address": "10.1.0.2/24", "cost": 1}}}"#, "ports.eth0.gateway"),
    (#"{"ports": {"eth0": {"mode": "dhcp"}}}"#, "ports.eth0.cost"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": "low"}}}"#, "ports.eth0.cost"),
    (#"{"ports": {"eth0": {"mode": "pppoe", "cost": 1}}}"#, "ports.eth0.mode"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": true}}}"#, "ports.eth0.cost"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": 1.5}}}"#, "ports.eth0.cost"),
    (#"{"ports": {"eth9": {"mode": "dhcp", "cost": 1}}}"#, "ports.eth9"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": 1, "proxy": "socks://x"}}}"#, "ports.eth0.proxy"),
    (#"{"ports": {"eth0": {"mode": "static", "address": "10.1.0.2/24", "gateway": "10.1.0.1", "dns": ["x"], "cost": 1}}}"#, "ports.eth0.dns[0]"),
    (#"{"portz": {}}"#, "portz"),
    (#"{"ports": {}, "probe": "ftp://x"}"#, "ports"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": 1}}, "probe": "ftp://x"}"#, "probe"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": 1}}, "testTime": 0}"#, "testTime"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": 1, "mac": "52:54:00:zz:00:01"}}}"#, "ports.eth0.mac"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": 1, "adress": "x"}}}"#, "ports.eth0.adress"),
    (#"{"ports": {"eth0": {"mode": "dhcp", "cost": 1, "address": "10.0.0.2/24"}}}"#, "ports.eth0.address"),
    (#"{"ports": {"eth0": {"mode": "static", "address": "10.1.0.2/24", "gateway": "10.9.0.1", "cost": 1}}}"#, "ports.eth0.gateway"),
])
func invalidFieldIsNamedInOneLine(json: String, field: String) {
    do {
        _ = try NetworkConfig(json: Data(json.utf8))
        Issue.record("accepted invalid config")
    } catch {
        #expect(error.description.contains(field + ":"), "\(error.description)")
        #expect(!error.description.contains("\n"))
    }
}

@Test func malformedConfigKeepsThePreviousOne() throws {
    var slot = ConfigSlot()
    let accepted = slot.offer(Data(goodConfig.utf8))
    #expect(accepted)
    let before = slot.current
    let rejected = slot.offer(Data("{ \"ports\": ".utf8))
    #expect(!rejected)
    #expect(slot.current == before)
    guard case .malformedJSON(let detail)? = slot.lastError else { Issue.record("\(String(describing: slot.lastError))"); return }
    #expect(!detail.isEmpty && !detail.contains("\n"))
}

@Test func randomBytesNeverCrashTheParser() {
    var rng = SystemRandomNumberGenerator()
    let base = Array(goodConfig.utf8)
    for _ in 0..<500 {
        var bytes = base
        for _ in 0..<Int.random(in: 1...8, using: &rng) {
            bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
        }
        _ = try? NetworkConfig(json: Data(bytes))
    }
}

@Test func lastKnownGoodIsNewestFirstDeduplicatedAndSurvivesReload() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lkg-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = LastKnownGoodStore(directory: dir, capacity: 2)
    #expect(try store.load().isEmpty)
    let a = try NetworkConfig(json: Data(goodConfig.utf8))
    let b = try NetworkConfig(json: Data(#"{"ports": {"wlan0": {"mode": "dhcp", "cost": 5}}}"#.utf8))
    let c = try NetworkConfig(json: Data(#"{"ports": {"wwan0": {"mode": "dhcp", "cost": 5}}}"#.utf8))
    try store.remember(a)
    try store.remember(b)
    try store.remember(a)
    #expect(try LastKnownGoodStore(directory: dir, capacity: 2).load().map(\.ports) == [a.ports, b.ports])
    try store.remember(c)
    #expect(try store.load().map(\.ports) == [c.ports, a.ports])
    // The atomic replacement leaves no temporary file beside the list.
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["network-lkg.json"])
}

@Test func corruptLastKnownGoodFileIsReportedWithItsPath() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lkg-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = LastKnownGoodStore(directory: dir)
    try Data("{".utf8).write(to: URL(fileURLWithPath: store.path))
    #expect(throws: LastKnownGoodError.corrupt(path: store.path, detail: "not a JSON list")) { try store.load() }
}

@Test(arguments: [
    ("http://10.200.0.1:8080/id", "http", "10.200.0.1", 8080, "/id"),
    ("http://controller.example", "http", "controller.example", 80, "/"),
    ("https://Controller.Example:8443/api/v1?x=1#frag", "https", "controller.example", 8443, "/api/v1?x=1"),
    ("http://10.0.0.1?q", "http", "10.0.0.1", 80, "/?q"),
] as [(String, String, String, Int, String)])
func httpURLsParseIntoSchemeHostPortAndPath(text: String, scheme: String, host: String, port: Int, path: String) throws {
    let url = try HTTPURL(text)
    #expect(url.scheme.rawValue == scheme && url.host == host && Int(url.port) == port && url.path == path)
}

@Test(arguments: ["ftp://x", "http://", "http://user@host/", "http://10.0.0.300/", "http://host:0/", "http://host:70000/",
                  "http://ho st/", "http://[::1]/", "http://a:1:2/", "http://-host/"])
func malformedURLsAreRefused(text: String) {
    // The one URL type refuses them all, except an IPv6 literal, which is a valid URL that the
    // IPv4-only network configuration refuses as a probe.
    if text != "http://[::1]/" { #expect((try? HTTPURL(text)) == nil) }
    let json = #"{"ports": {"eth0": {"mode": "dhcp", "cost": 1}}, "probe": "\#(text)"}"#
    #expect(throws: NetworkConfigError.self) { try NetworkConfig(json: Data(json.utf8)) }
    do { _ = try NetworkConfig(json: Data(json.utf8)) } catch { #expect(error.description.contains("probe:")) }
}

@Test func builtInDefaultIsEveryPortOnDHCPWiredFirst() {
    let config = NetworkConfig.allDHCP
    #expect(config.portsByPreference.map(\.name) == ["eth0", "wlan0", "wwan0"])
    #expect(config.ports.allSatisfy { $0.mode == .dhcp })
    #expect(config.probe == nil && config.testTime == .seconds(60))
    #expect((try? NetworkConfig(json: config.source))?.sameSettings(as: config) == true)
}

@Test func probeTestTimeMACAndPACAreParsedAndHTTPSProbesAreAccepted() throws {
    let config = try NetworkConfig(json: Data(#"""
        {"probe": "http://10.0.0.1:8080/ping", "testTime": 7,
         "ports": {"eth0": {"mode": "dhcp", "cost": 1, "mac": "52:54:00:AB:cd:01", "pac": "http://wpad/proxy.pac"}}}
        """#.utf8))
    #expect(config.probe?.description == "http://10.0.0.1:8080/ping")
    #expect(config.testTime == .seconds(7))
    #expect(config.ports[0].mac == "52:54:00:ab:cd:01")
    #expect(config.ports[0].pac?.host == "wpad")
    let https = try NetworkConfig(json: Data(#"{"probe": "https://c.example:8443/", "ports": {"eth0": {"mode": "dhcp", "cost": 1}}}"#.utf8))
    #expect(https.probe?.description == "https://c.example:8443/")
}
