import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// The app network's pure parts: the ruleset text, dnsmasq's sets, the counters' mapping,
/// tap names, the apps.json network section. Traffic through them is AppNetworkTests
/// (OutpostNetworkTests, in namespaces).
@Suite("app network: ruleset, counters, taps, config")
struct AppNetworkModelTests {
    static let acls: [VMManifest.ACL] = [
        .init(matches: [.ip(IPRange("10.200.0.2")!)], drop: true, name: "no-dot-2"),
        .init(matches: [.host("blocked.example")], drop: true, name: "no-blocked"),
        .init(matches: [.ip(IPRange("10.200.0.0/24")!), .host("ok.example")], name: "endpoints"),
    ]

    @Test func theRulesetAllowsDHCPAndDNSThenTheManifestsRulesInOrderThenDropsAll() throws {
        let text = ACLRuleset.render(bridge: "outpost-apps", gateway: "10.200.0.1", subnet: IPRange("10.200.0.1/24")!,
                                     taps: [TapACL(tap: "oa12345678" + "0", acls: Self.acls)])
        let chain = try #require(text.range(of: "    chain oa123456780 {\n")).upperBound
        let body = text[chain...].prefix { $0 != "}" }
        #expect(body.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } == [
            "ether type arp accept",
            "udp sport 68 udp dport 67 accept",
            "ip daddr 10.200.0.1 udp dport 53 accept",
            "ip daddr 10.200.0.1 tcp dport 53 accept",
            "ip daddr 10.200.0.2/32 counter name oa123456780.no-dot-2 drop",
            "ip daddr @oa123456780.no-blocked.0 counter name oa123456780.no-blocked drop",
            "ip daddr 10.200.0.0/24 ip daddr @oa123456780.endpoints.1 counter name oa123456780.endpoints accept",
            "counter name oa123456780.drop-all drop",
        ])
        #expect(text.contains("    set oa123456780.no-blocked.0 { type ipv4_addr; }\n"))
        #expect(text.contains("    counter oa123456780.drop-all {}\n"))
        #expect(text.contains("        iifname \"oa123456780\" jump oa123456780\n"))
        // NAT names no uplink, so a failover changes nothing here.
        #expect(text.contains("ip saddr 10.200.0.0/24 oifname != \"outpost-apps\" masquerade"))
        // One transaction replaces the old tables, whether or not they existed.
        #expect(text.hasPrefix("add table bridge outpost_apps\ndelete table bridge outpost_apps\n"))
    }

    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft"), "needs root and nft"))
    func nftAcceptsTheRenderedRuleset() throws {
        let dir = try TemporaryDirectory("oa-ruleset")
        defer { dir.remove() }
        let text = ACLRuleset.render(bridge: "outpost-apps", gateway: "10.200.0.1", subnet: IPRange("10.200.0.1/24")!,
                                     taps: [TapACL(tap: "oa123456780", acls: Self.acls), TapACL(tap: "oaabcdef001", acls: [])])
        try Data(text.utf8).write(to: URL(fileURLWithPath: dir.path + "/ruleset.nft"))
        // Check mode, in a network namespace of its own that ends with the command.
        try sh("unshare", "-n", "/usr/sbin/nft", "-c", "-f", dir.path + "/ruleset.nft")
    }

    @Test func anAppsAddressesComeFromDnsmasqsLeasesByItsTapsMACs() {
        let eth0 = AppNetwork.tap(app: "web", interface: "eth0", index: 0)
        let eth1 = AppNetwork.tap(app: "web", interface: "eth1", index: 1)
        let other = AppNetwork.tap(app: "db", interface: "eth0", index: 0)
        let leases = """
            1764460000 \(eth0.mac.uppercased()) 10.200.0.57 web *
            1764460000 \(other.mac) 10.200.0.12 db 01:02
            garbage
            1764460000 \(eth1.mac) 10.200.0.58 * *

            """
        #expect(AppNetwork.addresses(leases: leases, taps: [eth0, eth1]) == ["eth0=10.200.0.57", "eth1=10.200.0.58"])
        #expect(AppNetwork.addresses(leases: "", taps: [eth0]) == [])
    }

    @Test func dnsmasqPutsEachHostNamesAnswersIntoEverySetThatMatchesIt() {
        let lines = ACLRuleset.dnsmasqSets(taps: [TapACL(tap: "oa1", acls: Self.acls),
                                                  TapACL(tap: "oa2", acls: [.init(matches: [.host("blocked.example")], drop: true, name: "b")])])
        #expect(lines == [
            "nftset=/blocked.example/4#bridge#outpost_apps#oa1.no-blocked.0,4#bridge#outpost_apps#oa2.b.0",
            "nftset=/ok.example/4#bridge#outpost_apps#oa1.endpoints.1",
        ])
    }

    @Test func countersAreMappedToTheirRulesWithDropAllLast() throws {
        let json = #"""
        {"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"counter": {"family": "bridge", "name": "oa1.no-dot-2", "table": "outpost_apps", "handle": 4, "packets": 3, "bytes": 180}},
          {"counter": {"family": "bridge", "name": "oa1.drop-all", "table": "outpost_apps", "handle": 6, "packets": 7, "bytes": 420}},
          {"counter": {"family": "bridge", "name": "oa9.other", "table": "outpost_apps", "handle": 9, "packets": 1, "bytes": 1}}]}
        """#
        let counters = try ACLCounter.parse(json: Array(json.utf8), taps: [TapACL(tap: "oa1", acls: Self.acls)])
        #expect(counters.map(\.rule) == ["no-dot-2", "no-blocked", "endpoints", "drop-all"])
        #expect(counters.map(\.packets) == [3, 0, 0, 7])
        #expect(counters.map(\.action) == ["drop", "drop", "allow", "drop"])
        #expect(counters[0].bytes == 180)
        #expect(refusal { _ = try ACLCounter.parse(json: Array(#"{"x": 1}"#.utf8), taps: []) }
            == #"app network: nft -j list counters: no "nftables" list in its output"#)
    }

    @Test func anAppsTapNameAndMACAreStableShortAndLocallyAdministered() {
        let tap = AppNetwork.tap(app: "counter", interface: "local", index: 0)
        #expect(tap == AppNetwork.tap(app: "counter", interface: "local", index: 0))
        #expect(tap.name.hasPrefix("oa") && tap.name.count <= 15)
        #expect(AppNetwork.tap(app: "counter", interface: "x", index: 1).name == String(tap.name.dropLast()) + "1")
        #expect(AppNetwork.tap(app: "counter2", interface: "local", index: 0).name != tap.name)
        let first = UInt8(tap.mac.prefix(2), radix: 16) ?? 0
        #expect(tap.mac.count == 17 && first & 0x02 != 0 && first & 0x01 == 0)
        #expect(tap.qemuArguments(index: 0, legacy: false) == [
            "-netdev", "tap,id=net0,ifname=\(tap.name),script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=net0,mac=\(tap.mac)"])
        #expect(tap.qemuArguments(index: 1, legacy: true)[3] == "e1000,netdev=net1,mac=\(tap.mac)")
    }

    @Test func leasesComeFromTheSubnetAboveTheBridgesAddress() throws {
        let range = try #require(AppNetworkConfig.default.leaseRange)
        #expect(range.first == "10.200.0.10" && range.last == "10.200.0.254")
        #expect(AppNetworkConfig.default.netmask == "255.255.255.0")
        let small = try #require(AppNetworkConfig(bridge: "b", gateway: "192.168.5.1", prefixLength: 29).leaseRange)
        #expect(small.first == "192.168.5.2" && small.last == "192.168.5.6")
    }

    @Test func theNetworkSectionOfAppsJSONIsReadAndItsBadFieldsNamed() throws {
        func config(_ network: Any) throws -> [UInt8] {
            let apps = try JSONSerialization.jsonObject(with: Data(try appsJSON()))
            var root = apps as? [String: Any] ?? [:]
            root["network"] = network
            return Array(try JSONSerialization.data(withJSONObject: root))
        }
        #expect(try AppsConfig(json: try appsJSON()).network == .default)
        let custom = try AppsConfig(json: try config(["bridge": "apps0", "subnet": "192.168.50.1/24"])).network
        #expect(custom == AppNetworkConfig(bridge: "apps0", gateway: "192.168.50.1", prefixLength: 24))
        #expect(refusal { _ = try AppsConfig(json: try config(["subnet": "10.200.0.1"])) }
            == #"network.subnet: "10.200.0.1" is not the bridge's IPv4 address with a prefix of 8 to 29 (10.200.0.1/24)"#)
        #expect(refusal { _ = try AppsConfig(json: try config(["subnet": "10.200.0.0/24"])) }
            == #"network.subnet: "10.200.0.0/24" names the network, not an address in it, or leaves no room for leases"#)
        #expect(refusal { _ = try AppsConfig(json: try config(["bridge": "a-very-long-bridge"])) }
            == #"network.bridge: "a-very-long-bridge" is not a link name (1 to 15 characters, no '/', ':' or spaces)"#)
        #expect(refusal { _ = try AppsConfig(json: try config(["dhcp": true])) } == "network.dhcp: is not a known field (bridge, subnet)")
    }

    @Test func statusShowsTheRulesThatCountedSomething() {
        var status = AppStatus(state: "running", name: "a", error: nil, downloadedBytes: nil, totalBytes: nil, activate: true,
                               stoppedByOperator: false, pid: 5, restarts: 0, bootSeconds: nil, runningSinceUnix: nil,
                               memoryLimitBytes: nil, residentBytes: nil)
        status.acl = [ACLCounter(tap: "oa1", rule: "no-dot-2", action: "drop", packets: 3, bytes: 1),
                      ACLCounter(tap: "oa1", rule: "endpoints", action: "allow", packets: 0, bytes: 0),
                      ACLCounter(tap: "oa1", rule: "drop-all", action: "drop", packets: 2, bytes: 1)]
        #expect(status.line == "app a: running pid=5 acl no-dot-2(drop)=3 drop-all(drop)=2")
    }
}
