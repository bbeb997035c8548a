import Foundation
import OutpostApps
import OutpostHTTP
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostNetwork

/// The app instances' local network (OutpostApps' AppNetwork) inside the failover harness's
/// device namespace, with the real NetworkManager choosing the uplink:
///
///     app ns (opn-TAG-app)          device ns (opn-TAG-dev)                         upstreams (eth0, wlan0)
///     eth0 ── veth ── oa<hash>0 ── bridge outpost-apps 10.77.0.1/24 ── NAT ── eth0 10.1.0.2 ── 10.1.0.1, DNS 10.1.0.53
///     udhcpc                        dnsmasq (DHCP, DNS → resolv.conf)          wlan0 10.2.0.2 ── 10.2.0.1, DNS 10.2.0.53
///                                   nft: ACL chain per tap, masquerade          lo 10.200.0.1-4: http.server "<port>-side"
///
/// The veth stands in for the tap QEMU would open (no QEMU runs here): AppNetwork runs with
/// `createTaps = false` and bridges and filters the link of the tap's name. Every address is
/// inside the namespaces this test creates; they are deleted by name at the end, pass or fail.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root for network namespaces, nftables and dnsmasq"))
struct AppNetworkTests {
    static let manifest = #"""
    { "acKind": "VMManifest", "name": "netapp", "images": [ { "imagename": "disk" } ],
      "resources": [ { "name": "cpus", "value": 1 }, { "name": "memory", "value": 65536 } ],
      "interfaces": [ { "name": "local", "acls": [
        { "name": "no-dot-2", "matches": [ { "type": "ip", "value": "10.200.0.2" } ], "actions": [ { "drop": true } ] },
        { "name": "no-blocked", "matches": [ { "type": "host", "value": "blocked.example" } ], "actions": [ { "drop": true } ] },
        { "name": "no-prefetched", "matches": [ { "type": "host", "value": "prefetched.example" } ], "actions": [ { "drop": true } ] },
        { "name": "endpoints", "matches": [ { "type": "ip", "value": "10.200.0.0/24" } ] } ] } ] }
    """#

    @Test func anAppGetsALeaseReachesTheEndpointThroughNATAcrossAFailoverAndEachDropRuleCountsItsDrops() throws {
        let net = try NamespaceHarness(dhcpOn: [])
        let appNamespace = "opn-\(net.tag)-app"
        var dnsServers: [pid_t] = []
        var manager: NetworkManager?
        var network: AppNetwork?
        defer {
            if let network { _ = try? NetworkNamespace.run(net.device) { network.stop() } }
            manager?.stop()
            for pid in dnsServers { stopDaemon(pid) }
            _ = try? sh("ip", "netns", "del", appNamespace)
            net.tearDown()
        }

        // The endpoints: two more addresses on each upstream's lo (the http.server binds all),
        // and a DNS server per upstream that knows blocked.example.
        for port in ["eth0", "wlan0"] {
            let ns = net.upstream(port)
            for address in ["10.200.0.2/32", "10.200.0.3/32", "10.200.0.4/32", "10.\(net.subnet(port)).0.53/32"] {
                try sh("ip", "-n", ns, "addr", "add", address, "dev", "lo")
            }
            dnsServers.append(try startDNSServer(in: ns, listen: "10.\(net.subnet(port)).0.53", workDir: net.workDir, tag: port))
        }

        let started = try net.manager(holdDown: .seconds(1))
        manager = started
        try started.start()
        try waitFor("eth0 active", within: .seconds(10), every: .milliseconds(50)) { started.snapshot().active == "eth0" }

        // The app's side: a namespace on a veth whose device end has the tap's name.
        let appManifest = try VMManifest(json: Array(Self.manifest.utf8))
        let tap = AppNetwork.tap(app: "netapp", interface: "local", index: 0)
        try sh("ip", "netns", "add", appNamespace)
        try sh("ip", "-n", appNamespace, "link", "set", "lo", "up")
        try sh("ip", "-n", net.device, "link", "add", tap.name, "type", "veth", "peer", "name", "eth0", "netns", appNamespace)
        try sh("ip", "-n", appNamespace, "link", "set", "eth0", "address", tap.mac, "up")

        var options = AppNetwork.Options()
        options.config = AppNetworkConfig(bridge: "outpost-apps", gateway: "10.77.0.1", prefixLength: 24)
        options.directory = net.workDir + "/apps-network"
        options.resolvConf = net.workDir + "/resolv.conf"
        options.createTaps = false
        let apps = AppNetwork(options: options)
        network = apps
        let taps = try NetworkNamespace.run(net.device) { () throws -> [AppTap] in
            try apps.start()
            return try apps.attach(app: "netapp", manifest: appManifest)
        }
        #expect(taps == [tap])

        // A lease from dnsmasq, applied as a guest's DHCP client would.
        let lease = try dhcpLease(in: appNamespace, workDir: net.workDir)
        #expect(lease.router == "10.77.0.1" && lease.dns == "10.77.0.1" && lease.subnet == "255.255.255.0")
        #expect(lease.address.hasPrefix("10.77.0."))
        try sh("ip", "-n", appNamespace, "addr", "add", lease.address + "/24", "dev", "eth0")
        try sh("ip", "-n", appNamespace, "route", "add", "default", "via", lease.router)

        // Through NAT: the upstreams have no route back to 10.77.0.0/24.
        #expect(try get("10.200.0.1", from: appNamespace, within: .seconds(10)) == "eth0-side")

        func counters() throws -> [String: UInt64] {
            let all = try NetworkNamespace.run(net.device) { try apps.counters(app: "netapp") }
            return Dictionary(uniqueKeysWithValues: all.map { ($0.rule, $0.packets) })
        }
        let before = try counters()
        #expect(before["endpoints"].map { $0 > 0 } == true, "\(before)")
        #expect(before["no-dot-2"] == 0 && before["no-blocked"] == 0, "\(before)")

        // The ip rule: 10.200.0.2 answers the device, but not the app.
        #expect(try NetworkNamespace.run(net.device) { try HTTPProbe.get(try HTTPURL("http://10.200.0.2:8080/id"), device: nil, timeout: .seconds(2)) } == "eth0-side")
        #expect(try get("10.200.0.2", from: appNamespace, within: .seconds(1)) == nil)
        let afterIP = try counters()
        #expect(afterIP["no-dot-2"].map { $0 > 0 } == true, "\(afterIP)")
        #expect(afterIP["no-blocked"] == 0, "\(afterIP)")

        // The host rule: once the app resolved blocked.example through dnsmasq (which forwards
        // to the uplink's DNS server), its address is dropped.
        #expect(try sh("ip", "netns", "exec", appNamespace, "busybox", "nslookup", "-type=a", "blocked.example", lease.dns).contains("10.200.0.3"))
        #expect(try get("10.200.0.3", from: appNamespace, within: .seconds(1)) == nil)
        let afterHost = try counters()
        #expect(afterHost["no-blocked"].map { $0 > 0 } == true, "\(afterHost)")
        #expect(afterHost["no-dot-2"] == afterIP["no-dot-2"], "\(afterHost)")

        // A host rule whose name the app never looked up: the device's refresh asks dnsmasq,
        // which fills the rule's set from the answer. Before it, the endpoints rule lets it through.
        #expect(try get("10.200.0.4", from: appNamespace, within: .seconds(5)) == "eth0-side")
        #expect(try NetworkNamespace.run(net.device) { apps.refreshHostNames() } == ["blocked.example", "prefetched.example"])
        #expect(try get("10.200.0.4", from: appNamespace, within: .seconds(1)) == nil)
        let afterRefresh = try counters()
        #expect(afterRefresh["no-prefetched"].map { $0 > 0 } == true, "\(afterRefresh)")
        #expect(afterRefresh["no-blocked"] == afterHost["no-blocked"], "\(afterRefresh)")

        // Nothing allows the uplink's gateway: the final drop counts it.
        #expect(try get("10.1.0.1", from: appNamespace, within: .seconds(1)) == nil)
        let afterDefault = try counters()
        #expect((afterDefault["drop-all"] ?? 0) > (afterHost["drop-all"] ?? 0), "\(afterDefault)")

        // Failover: eth0 loses carrier, the manager moves the default route to wlan0; the
        // masquerade rule names no uplink, so the app's next connection leaves through wlan0.
        try net.setEthCarrier(false)
        try waitFor("wlan0 active", within: .seconds(10), every: .milliseconds(50)) { started.snapshot().active == "wlan0" }
        #expect(try get("10.200.0.1", from: appNamespace, within: .seconds(10)) == "wlan0-side")
        // DNS follows too: dnsmasq rereads the resolv.conf the manager rewrote (10.2.0.53).
        #expect(try sh("ip", "netns", "exec", appNamespace, "busybox", "nslookup", "-type=a", "after.blocked.example", lease.dns).contains("10.200.0.3"))
        #expect(try get("10.200.0.2", from: appNamespace, within: .seconds(1)) == nil)
        #expect(try get("10.200.0.3", from: appNamespace, within: .seconds(1)) == nil)
        let afterFailover = try counters()
        #expect(afterFailover["no-dot-2"].map { $0 > (afterHost["no-dot-2"] ?? 0) } == true, "\(afterFailover)")
        #expect(afterFailover["no-blocked"].map { $0 > (afterHost["no-blocked"] ?? 0) } == true, "\(afterFailover)")
        print("app network: lease \(lease.address); counters after failover \(afterFailover)")
    }

    /// GET http://ADDRESS:8080/id from the app namespace, retried until `within` passes; nil if never answered.
    func get(_ address: String, from namespace: String, within limit: Duration) throws -> String? {
        let url = try HTTPURL("http://\(address):8080/id")
        var body: String?
        waitUntil(limit, every: .milliseconds(100)) {
            body = try? NetworkNamespace.run(namespace) { try HTTPProbe.get(url, device: nil, timeout: .milliseconds(500)) }
            return body != nil
        }
        return body
    }

    struct Lease { var address, subnet, router, dns: String }

    /// busybox udhcpc in the app namespace; its script writes the lease's fields to a file.
    func dhcpLease(in namespace: String, workDir: String) throws -> Lease {
        let leaseFile = workDir + "/app.lease"
        let script = workDir + "/udhcpc.sh"
        try Data("""
        #!/bin/sh
        [ "$1" = bound ] && echo "$ip $subnet $router $dns" > \(leaseFile)
        exit 0

        """.utf8).write(to: URL(fileURLWithPath: script))
        try sh("chmod", "755", script)
        try sh(["ip", "netns", "exec", namespace, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "1", "-s", script],
               timeout: .seconds(30))
        let fields = try String(contentsOfFile: leaseFile, encoding: .utf8).split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
        try #require(fields.count >= 4, "lease: \(fields)")
        return Lease(address: fields[0], subnet: fields[1], router: fields[2], dns: fields[3])
    }

    /// A DNS-only dnsmasq on `listen` inside `namespace` answering *.blocked.example with 10.200.0.3
    /// and *.prefetched.example with 10.200.0.4;
    /// it daemonizes, so its pid comes from its pid file.
    func startDNSServer(in namespace: String, listen: String, workDir: String, tag: String) throws -> pid_t {
        let pidFile = "\(workDir)/\(tag).dns.pid"
        try sh("ip", "netns", "exec", namespace, "dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               "--user=root", "--group=root", "--listen-address=\(listen)", "--bind-interfaces", "--port=53",
               "--address=/blocked.example/10.200.0.3", "--address=/prefetched.example/10.200.0.4", "--pid-file=\(pidFile)", "--log-facility=\(workDir)/\(tag).dns.log")
        var pid: pid_t = 0
        try waitFor("dnsmasq pid file in \(namespace)", within: .seconds(5)) {
            pid = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
            return pid > 1
        }
        return pid
    }

    func stopDaemon(_ pid: pid_t) {
        kill(pid, SIGTERM)
        if waitUntil(.seconds(3), every: .milliseconds(20), { kill(pid, 0) != 0 }) == nil { kill(pid, SIGKILL) }
    }
}
