import Foundation
import OutpostNetwork
import OutpostPlatform
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// The boot-sector app in real QEMU with a NIC on the app network, inside a network namespace
/// this test creates and deletes by name: its tap exists in the bridge before QEMU opens it and
/// is gone once the instance is halted. Traffic through the network is AppNetworkTests'.
@Suite("App instances get their tap in the app network's bridge", .serialized,
       .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft"), "needs root, nft and dnsmasq"))
struct AppInstanceNetworkTests {
    @Test func aRunningInstanceHasItsTapInTheBridgeAndLosesItWhenHalted() throws {
        let dir = try TemporaryDirectory("apps-net")
        let namespace = "oa-\(String(UInt32.random(in: 0...0xFFFFFF), radix: 16))-inst"
        try sh("ip", "netns", "add", namespace)
        defer {
            _ = try? sh("ip", "netns", "del", namespace)
            dir.remove()
        }
        try sh("ip", "-n", namespace, "link", "set", "lo", "up")
        try Data("nameserver 127.0.0.1\n".utf8).write(to: URL(fileURLWithPath: dir.path + "/resolv.conf"))

        var networkOptions = AppNetwork.Options()
        networkOptions.config = AppNetworkConfig(bridge: "outpost-apps", gateway: "10.77.0.1", prefixLength: 24)
        networkOptions.directory = dir.path + "/network"
        networkOptions.resolvConf = dir.path + "/resolv.conf"
        let network = AppNetwork(options: networkOptions)
        var options = AppInstanceTests.options()
        options.network = network
        let base = try BootCounter.disk(in: dir.path)
        var manifest = try BootCounter.manifest()
        manifest.interfaces = [VMManifest.Interface(name: "local", directAttach: false, acls: [])]
        let app = try AppInstance(name: "counter", manifest: manifest, disks: [AppInstance.Disk(image: manifest.images[0], base: base)],
                                  directory: dir.path + "/counter", options: options, admission: MemoryAdmission())
        // Everything that touches links, nft or QEMU runs on threads inside the namespace
        // (QEMU and the instance's monitor thread inherit it), the teardown too.
        defer {
            _ = try? NetworkNamespace.run(namespace) {
                app.close()
                network.stop()
            }
        }
        try NetworkNamespace.run(namespace) {
            try network.start()
            try app.start()
        }
        #expect(app.waitForState(within: AppInstanceTests.boot) { $0 == .running } == .running, "\(app.console())")
        let tap = try #require(network.taps(app: "counter").first)
        #expect(tap == AppNetwork.tap(app: "counter", interface: "local", index: 0))
        let link = try sh("ip", "-n", namespace, "-d", "link", "show", tap.name)
        #expect(link.contains("master outpost-apps") && link.contains("LOWER_UP") && link.contains("tun type tap"), "\(link)")
        let pid = try #require(app.pid)
        let commandLine = try String(decoding: Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")), as: UTF8.self)
            .split(separator: "\0").map(String.init)
        #expect(commandLine.contains("tap,id=net0,ifname=\(tap.name),script=no,downscript=no"))
        #expect(commandLine.contains("virtio-net-pci,netdev=net0,mac=\(tap.mac)"))
        let counters = try NetworkNamespace.run(namespace) { try network.counters(app: "counter") }
        #expect(counters.map(\.rule) == ["drop-all"])

        _ = try NetworkNamespace.run(namespace) { app.stop() }
        #expect(app.state == .halted)
        #expect(network.taps(app: "counter").isEmpty)
        #expect(throws: (any Error).self) { try sh("ip", "-n", namespace, "link", "show", tap.name) }
    }
}
