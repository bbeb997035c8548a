import Foundation
import OutpostTestSupport
import Testing

/// The network manager in the real image: three virtio NICs on QEMU
/// user-mode networking (each its own DHCP server, 10.0.2.2 is the host's
/// loopback), renamed by MAC to eth0/wlan0/wwan0. The probe endpoint runs on
/// the host's loopback and logs which port each probe came through. Cutting
/// eth0 with the QEMU monitor's `set_link` must move traffic to wlan0 and
/// keep the endpoint reachable.
extension QEMU {
    @Suite("Network failover in QEMU", .serialized)
    struct NetworkTests {
        /// A probe endpoint on 127.0.0.1 that appends "<unix time> <port>" for each
        /// request, the port taken from the X-Outpost-Port header.
        static let server = #"""
        import http.server, socketserver, sys, time, threading, os
        log = sys.argv[1]
        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                with open(log, 'a') as f:
                    f.write('%.3f %s\n' % (time.time(), self.headers.get('X-Outpost-Port', '-')))
                body = b'outpost probe ok\n'
                self.send_response(200)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        class S(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
        srv = S(('127.0.0.1', 0), H)
        open(log + '.port.tmp', 'w').write(str(srv.server_address[1]))
        os.rename(log + '.port.tmp', log + '.port')
        threading.Timer(900, srv.shutdown).start()
        srv.serve_forever()
        """#

        /// Probe requests per port seen at or after `since` (unix time).
        static func probes(_ log: String, port: String, since: Double) -> Int {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").filter { line in
                let parts = line.split(separator: " ")
                return parts.count == 2 && parts[1] == port && (Double(parts[0]) ?? 0) >= since
            }.count
        }

        @Test func cuttingEth0WithSetLinkMovesTrafficToWlan0AndTheProbeEndpointStaysReachable() throws {
            let h = try Harness("network")
            defer { h.cleanup() }
            let log = h.dir + "/probes.log"
            try Self.server.write(toFile: h.dir + "/probe.py", atomically: true, encoding: .utf8)
            let server = try ChildProcess(["python3", h.dir + "/probe.py", log])
            defer { server.kill() }
            var listening: Int?
            try waitFor("probe server listening", within: .seconds(20)) {
                listening = (try? String(contentsOfFile: log + ".port", encoding: .utf8)).flatMap { Int($0) }
                return listening != nil || !server.isRunning
            }
            let port = try #require(listening, "probe server exited before it listened")

            // CONFIG: the development one with a network config that probes the host.
            let config = h.dir + "/config"
            try Harness.sh(["cp", "-r", Harness.out + "/dev-config", config])
            try """
            { "probe": "http://10.0.2.2:\(port)/probe",
              "ports": {
                "eth0":  { "mode": "dhcp", "cost": 10, "mac": "52:54:00:12:34:56" },
                "wlan0": { "mode": "dhcp", "cost": 20, "mac": "52:54:00:12:34:57" },
                "wwan0": { "mode": "dhcp", "cost": 30, "mac": "52:54:00:12:34:58" } } }
            """.write(toFile: config + "/network.json", atomically: false, encoding: .utf8)
            try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--config", config, "--slot", Harness.out + "/slot.img",
                            "--efi", Harness.out + "/efi", "--output", h.image])

            let live = try Harness.LiveBoot(h, timeout: 600, arguments: ["--nics", "3"], consoleInput: true)
            defer { _ = live.waitForExit(timeout: 5) }
            let ready = live.wait(for: "outpost: ready ", timeout: 240)
            #expect(ready != nil, "\(live.console.suffix(3000))")
            let onEth0 = live.wait(for: "network: active port eth0", timeout: 120)
            #expect(onEth0 != nil, "eth0 never became active:\n\(live.console.suffix(3000))")

            // Cut eth0's link: the guest sees its carrier drop.
            let cut = Date().timeIntervalSince1970
            try live.monitorCommand("set_link n0 off")
            let moved = live.wait(for: "network: active port wlan0", after: onEth0?.index ?? 0, timeout: 30)
            #expect(moved != nil, "traffic did not move to wlan0:\n\(live.console.suffix(3000))")
            if let moved {
                // Console lines are stamped when the host reads them (0.1 s polling): a figure, not an assertion.
                print(String(format: "QEMU failover: set_link n0 off → wlan0 active within %.1f s", moved.at.timeIntervalSince1970 - cut))
            }
            // The endpoint keeps answering: probes through wlan0 after the cut.
            var reached = false
            for _ in 0..<60 where !reached {
                reached = Self.probes(log, port: "wlan0", since: cut) > 0
                if !reached { usleep(500_000) }
            }
            #expect(reached, "no probe reached the host through wlan0 after the cut")
            try live.type("network status\n")
            let report = live.wait(for: "network: active wlan0", after: moved?.index ?? 0, timeout: 30)
            #expect(report != nil, "network status did not show wlan0 active:\n\(live.console.suffix(2000))")
            _ = live.wait(for: "network: wwan0:", after: report?.index ?? 0, timeout: 10)
            #expect(live.console.contains("network: eth0: carrier down"), "\(live.console.suffix(2000))")
            // The kernel named the second and third NICs eth1 and eth2; the manager renamed them by MAC.
            #expect(live.console.contains("network: wlan0: carrier up, 10.0.2.15/24"), "\(live.console.suffix(2000))")
            #expect(live.console.contains("network: wwan0: carrier up, 10.0.2.15/24"), "\(live.console.suffix(2000))")

            // Restore eth0: after the hold-down the better port takes over again.
            try live.monitorCommand("set_link n0 on")
            let back = live.wait(for: "network: active port eth0", after: moved?.index ?? 0, timeout: 150)
            #expect(back != nil, "traffic did not return to eth0:\n\(live.console.suffix(3000))")
            try live.type("network status --json\n")
            let json = live.wait(for: #""active":"eth0""#, after: back?.index ?? 0, timeout: 30)
            #expect(json?.text.contains(#""wwan0":{"#) == true, "\(json?.text ?? live.console.suffix(2000).description)")

            // Every uplink gone: no usable port, and after 30 s the connectivity report on the console.
            for netdev in ["n0", "n1", "n2"] { try live.monitorCommand("set_link \(netdev) off") }
            let none = live.wait(for: "network: no usable port", after: back?.index ?? 0, timeout: 30)
            #expect(none != nil, "\(live.console.suffix(2000))")
            let diagnosis = live.wait(for: "network: active none", after: none?.index ?? 0, timeout: 60)
            #expect(diagnosis != nil, "no connectivity report:\n\(live.console.suffix(2000))")
            #expect(live.wait(for: "network: wwan0: carrier down", after: none?.index ?? 0, timeout: 10) != nil)

            try live.monitorCommand("system_powerdown")
            #expect(live.waitForExit(timeout: 90), "no orderly power-off")
        }
    }
}
