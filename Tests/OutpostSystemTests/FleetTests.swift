import Foundation
import OutpostTestSupport
import Testing

/// The managed device end to end: the real `outpost-controller` on the host's
/// loopback (the guest reaches it at 10.0.2.2), an image built from its
/// `init` CONFIG, one QEMU session across every reboot. The device registers,
/// its boot log arrives without a sequence gap, a reboot command acts once,
/// `set-os` to v2 downloads over HTTPS from the controller, installs, restarts
/// and commits after its test window; v3 with the controller stopped through
/// its whole window is not committed and the device falls back to v2, and v3
/// is not tried again until `retry-update` bumps the counter; v4, failing its
/// own health check, falls back with the controller told why; a network
/// config that cuts the device off from its controller is rolled back.
extension QEMU {
    @Suite("Fleet management in QEMU", .serialized)
    struct FleetTests {
        static var controller: String { Harness.out + "/bin/outpost-controller" }
        /// Long enough for a booted guest's client to reach the controller once
        /// (network up, first backoff of 5-10 s) under TCG with a second guest
        /// beside it; every boot with a trial waits it out.
        static let testWindowSeconds = 30


        /// The running controller child; `start` again after `stop` serves the same data.
        final class Controller {
            let data: String
            let port: Int
            var process: ChildProcess?

            init(data: String, port: Int) {
                self.data = data
                self.port = port
            }

            func start() throws {
                let child = try ChildProcess([FleetTests.controller, "serve", "--data", data, "--listen", "127.0.0.1:\(port)"])
                process = child
                try waitFor("the controller's admin socket", within: .seconds(60), every: .milliseconds(200)) {
                    !child.isRunning || (try? self.admin(["device", "list", "--json"])) != nil
                }
                guard child.isRunning else { throw TestSupportError.spawn(command: "outpost-controller serve", reason: "exited") }
            }

            /// Stops the child by its PID.
            func stop() {
                process?.terminate()
                process = nil
            }

            /// One admin command; its stdout parsed as JSON.
            @discardableResult
            func admin(_ arguments: [String]) throws -> Any {
                let r = try Harness.sh([FleetTests.controller] + arguments + ["--data", data], timeout: .seconds(120))
                return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8), options: [.fragmentsAllowed])
            }

            func devices() -> [[String: Any]] { ((try? admin(["device", "list", "--json"])) as? [[String: Any]]) ?? [] }

            func show(_ id: String) -> [String: Any] { ((try? admin(["device", "show", id, "--json"])) as? [String: Any]) ?? [:] }

            /// Every log entry the controller holds for `id` (one JSON object per line).
            func logs(_ id: String) -> [[String: Any]] {
                guard let r = try? Harness.sh([FleetTests.controller, "device", "logs", id, "--json", "--data", data],
                                              timeout: .seconds(120)) else { return [] }
                return r.stdout.split(separator: "\n").compactMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }
            }
        }

        /// A controller's data in `h.dir/fleet` (`init` with `hosts`, the harness's trust keys), the
        /// test window in its CONFIG, and the image built from that CONFIG at `h.image`: the device
        /// this image boots is managed by that controller. Returns the data and CONFIG directories.
        /// With `vault`, CONFIG also gets the release key's vault approvals (security version 1).
        static func managedImage(_ h: Harness, hosts: [String], port: Int, vault: Bool = false) throws -> (data: String, config: String) {
            let data = h.dir + "/fleet"
            try Harness.sh([Self.controller, "init", data] + hosts.flatMap { ["--host", $0] }
                           + ["--port", String(port), "--trust", Harness.out + "/keys"])
            let config = data + "/config"
            try #"{"testWindowSeconds": \#(Self.testWindowSeconds)}"#.write(toFile: config + "/update.json", atomically: false,
                                                                            encoding: .utf8)
            try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--config", config, "--slot", Harness.out + "/slot.img",
                            "--efi", Harness.out + "/efi", "--output", h.image]
                           + (vault ? ["--vault-key", Harness.out + "/keys/dev.key.pem", "--security-version", "1"] : []))
            return (data, config)
        }

        /// Polls `probe` every 2 s until it returns a value, at most `seconds`.
        static func poll<T>(_ seconds: Double, _ probe: () -> T?) -> T? {
            let deadline = Date().addingTimeInterval(seconds)
            repeat {
                if let value = probe() { return value }
                usleep(2_000_000)
            } while Date() < deadline
            return probe()
        }

        /// The development image's CONFIG names no controller: said once, shown in status, no client.
        @Test func anImageWithoutAControllerURLIsUnmanagedAndSaysSoOnce() throws {
            let h = try Harness("unmanaged")
            defer { h.cleanup() }
            let live = try Harness.LiveBoot(h, timeout: 400, consoleInput: true)
            defer {
                try? live.monitorCommand("quit")
                _ = live.waitForExit(timeout: 30)
            }
            let ready = try #require(live.wait(for: "outpost: ready slot=IMGA", timeout: 300), "\(live.console.suffix(3000))")
            let unmanaged = try #require(live.wait(for: "outpost: fleet: unmanaged (no controller-url on CONFIG)", after: ready.index,
                                                   timeout: 30), "\(live.console.suffix(3000))")
            _ = try #require(live.wait(for: "outpost: network: active port", after: ready.index, timeout: 120))
            try live.type("status\n")
            let inStatus = live.wait(for: "outpost: agent: pid=1", after: unmanaged.index, timeout: 30)
            #expect(inStatus != nil, "\(live.console.suffix(2000))")
            let statusLines = live.lines[(unmanaged.index + 1)...].map(\.text)
            #expect(statusLines.contains { $0.contains("outpost: fleet: unmanaged (no controller-url on CONFIG)") }, "status: \(statusLines)")
            #expect(!live.lines.contains { $0.text.contains("fleet: managed by") || $0.text.contains("fleet: controller /api") })
            #expect(!live.lines.contains { $0.text.contains("  fleet ") }, "no fleet component runs")
        }

        @Test func registersReportsBootLogsRebootsOnceOnCommandUpdatesToV2AndWithoutItsControllerFallsBackUntilRetried() throws {
            let h = try Harness("fleet")
            defer { h.cleanup() }
            guard FileManager.default.fileExists(atPath: Self.controller) else { throw Harness.Missing(path: Self.controller) }

            // The controller's data and the CONFIG it writes; the image is built from that CONFIG.
            let port = try freeLoopbackPort()
            let (data, config) = try Self.managedImage(h, hosts: ["10.0.2.2"], port: port)
            let v2 = try UpdateTests.bundle(h, version: "2.0.0", security: 2)
            let v3 = try UpdateTests.bundle(h, version: "3.0.0", security: 3)
            let v4 = try UpdateTests.bundle(h, version: "4.0.0", security: 4, tweakRoot: { root in
                try "component selftest: deliberately broken test build\n"
                    .write(toFile: root + "/etc/outpost/selftest-fail", atomically: false, encoding: .utf8)
            })

            let controller = Controller(data: data, port: port)
            try controller.start()
            defer { controller.stop() }

            let live = try Harness.LiveBoot(h, timeout: 1500, consoleInput: true)
            defer {
                try? live.monitorCommand("quit")
                _ = live.waitForExit(timeout: 30)
            }

            // (a) It boots, registers and shows up with slot, version, last boot and ports.
            let ready = try #require(live.wait(for: "outpost: ready slot=IMGA version=1.0.0", timeout: 300),
                                     "\(live.console.suffix(4000))")
            #expect(live.wait(for: "outpost: fleet: managed by 10.0.2.2:\(port)", timeout: 5) != nil)
            let device = try #require(Self.poll(180) { () -> [String: Any]? in
                controller.devices().first { ($0["slot"] as? String) == "IMGA" && !((($0["ports"] as? [Any]) ?? []).isEmpty) }
            }, "no device with ports in `device list`: \(controller.devices()) \(live.console.suffix(3000))")
            let id = try #require(device["id"] as? String)
            #expect(device["version"] as? String == "1.0.0", "\(device)")
            #expect(device["lastBoot"] as? String == "first-boot", "\(device)")
            let ports = (device["ports"] as? [[String: Any]]) ?? []
            #expect(ports.contains { $0["name"] as? String == "eth0" && ($0["active"] as? Bool) == true }, "\(ports)")
            print("fleet: registered \(id): \(device)")
            // The console's `status` names the controller and the registration.
            try live.type("status\n")
            let statusLine = live.wait(for: "outpost: fleet: controller 10.0.2.2:\(port) registered as \(id)", after: ready.index,
                                       timeout: 30)
            #expect(statusLine != nil, "\(live.console.suffix(2000))")
            // Config polls every 5 s from here on, so commands are picked up quickly.
            try controller.admin(["device", "set-intervals", id, "--config", "5", "--json"])

            // Boot log lines, printed before the client existed, arrive with no sequence gap.
            let logs = try #require(Self.poll(120) { () -> [[String: Any]]? in
                let entries = controller.logs(id)
                return entries.contains { ($0["message"] as? String)?.contains("ready slot=IMGA version=1.0.0") == true } ? entries : nil
            }, "the ready line never reached `device logs`: \(controller.logs(id).suffix(10))")
            let sequences = logs.compactMap { ($0["sequence"] as? NSNumber)?.uint64Value }
            #expect(sequences.first == 1 && sequences == Array(1...UInt64(sequences.count)), "gap in \(sequences)")
            // The ready line was printed before the client existed (Console's buffer), the client's own line after.
            func sequence(_ prefix: String) -> UInt64? {
                logs.first { ($0["message"] as? String)?.hasPrefix(prefix) == true }.flatMap { ($0["sequence"] as? NSNumber)?.uint64Value }
            }
            let readySequence = try #require(sequence("ready slot=IMGA"))
            // The source is a field of its own: the text has no "fleet: " prefix.
            let managedSequence = try #require(logs.first {
                $0["source"] as? String == "fleet" && ($0["message"] as? String)?.hasPrefix("managed by") == true
            }.flatMap { ($0["sequence"] as? NSNumber)?.uint64Value }, "\(logs.prefix(8))")
            #expect(readySequence < managedSequence)
            print("fleet: \(logs.count) log entries, sequences 1...\(sequences.last ?? 0) without a gap")

            // (b) `device reboot` bumps the counter: exactly one reboot, recorded as `controller`.
            try controller.admin(["device", "reboot", id, "--json"])
            let stopping = try #require(live.wait(for: "outpost: stopping: reason=controller", after: ready.index, timeout: 120),
                                        "\(live.console.suffix(3000))")
            let rebooted = try #require(live.wait(for: "outpost: ready slot=IMGA version=1.0.0 last-boot=controller",
                                                  after: stopping.index, timeout: 300), "\(live.console.suffix(3000))")
            let afterReboot = try #require(Self.poll(120) { () -> [String: Any]? in
                let d = controller.devices().first { $0["id"] as? String == id }
                return d?["lastBoot"] as? String == "controller" ? d : nil
            }, "device list never showed last boot controller")
            print("fleet: after the reboot command: \(afterReboot)")

            // (c) set-os v2: download over HTTPS from the controller, install, restart, commit.
            // The v1 boot after the reboot polls config several times meanwhile: it does not reboot again.
            try controller.admin(["device", "set-os", id, "--bundle", v2, "--json"])
            let installed = try #require(live.wait(for: "update: installed version=2.0.0 slot=IMGB", after: rebooted.index,
                                                   timeout: 600), "\(live.console.suffix(4000))")
            let between = live.lines[rebooted.index..<installed.index].map(\.text)
            #expect(!between.contains { $0.contains("stopping:") }, "rebooted again before the update: \(between)")
            #expect(between.contains { $0.contains("update: downloading version=2.0.0 from https://10.0.2.2:\(port)/") }, "\(between)")
            let v2Ready = try #require(live.wait(for: "outpost: ready slot=IMGB version=2.0.0 last-boot=update",
                                                 after: installed.index, timeout: 300), "\(live.console.suffix(3000))")
            let committed = try #require(live.wait(for: "update: committed version=2.0.0 slot=IMGB", after: v2Ready.index,
                                                   timeout: Double(Self.testWindowSeconds) + 240), "\(live.console.suffix(3000))")
            #expect(live.lines.filter { $0.text.contains("outpost: stopping: reason=controller") }.count == 1,
                    "the reboot command acted more than once")
            let shown = try #require(Self.poll(120) { () -> [String: Any]? in
                let s = controller.show(id)
                return (s["version"] as? String) == "2.0.0" && (s["update"] as? String) == "committed 2.0.0" ? s : nil
            }, "device show never reported v2 committed: \(controller.show(id))")
            let steps = ((shown["updateHistory"] as? [[String: Any]]) ?? []).compactMap { $0["step"] as? String }
            for step in ["downloading", "installing", "rebooting", "testing", "committed"] {
                #expect(steps.contains(step), "update history \(steps) lacks \(step)")
            }
            print("fleet: v2 committed; update history \(steps)")

            // (d) v3 with the controller stopped through its whole test window: not committed, back to v2.
            try controller.admin(["device", "set-os", id, "--bundle", v3, "--json"])
            let v3Installed = try #require(live.wait(for: "update: installed version=3.0.0 slot=IMGA", after: committed.index,
                                                     timeout: 600), "\(live.console.suffix(4000))")
            controller.stop()
            let failed = try #require(live.wait(for: "update: test of version=3.0.0 failed: the controller 10.0.2.2:\(port) was not reachable",
                                                after: v3Installed.index, timeout: Double(Self.testWindowSeconds) + 300),
                                      "\(live.console.suffix(4000))")
            #expect(live.wait(for: "update: committed version=3.0.0", after: v3Installed.index, timeout: 0) == nil)
            let fellBack = try #require(live.wait(for: "update: fell back from IMGA version=3.0.0", after: failed.index, timeout: 300),
                                        "\(live.console.suffix(3000))")
            #expect(live.wait(for: "outpost: ready slot=IMGB version=2.0.0", after: failed.index, timeout: 5) != nil)
            // The controller back: the device reports the failure and v2 running.
            try controller.start()
            let reported = Self.poll(180) { () -> [String: Any]? in
                let s = controller.show(id)
                return (s["version"] as? String) == "2.0.0" && ((s["update"] as? String) ?? "").hasPrefix("failed 3.0.0") ? s : nil
            }
            #expect(reported != nil, "device show never reported v3 failed: \(controller.show(id)["update"] ?? "-")")
            print("fleet: v3 not committed without its controller: \(fellBack.text)")

            // (e) v3 is not tried again while the retry counter stays (four 5 s config polls)...
            #expect(live.wait(for: "update: version=3.0.0 failed before; waiting for the controller's retry counter",
                              after: fellBack.index, timeout: 60) != nil, "\(live.console.suffix(2000))")
            let quiet = live.lines.count
            usleep(20_000_000)
            #expect(live.wait(for: "update: installing version=3.0.0", after: quiet, timeout: 0) == nil)
            // ...until `retry-update` bumps it; with its controller there this time, it commits.
            try controller.admin(["device", "retry-update", id, "--json"])
            let retried = try #require(live.wait(for: "update: retrying version=3.0.0 (retry counter 1)", after: quiet, timeout: 180),
                                       "\(live.console.suffix(3000))")
            let v3Committed = live.wait(for: "update: committed version=3.0.0 slot=IMGA", after: retried.index,
                                        timeout: Double(Self.testWindowSeconds) + 600)
            #expect(v3Committed != nil, "\(live.console.suffix(3000))")
            let shownV3 = Self.poll(120) { () -> [String: Any]? in
                let s = controller.show(id)
                return (s["version"] as? String) == "3.0.0" && (s["update"] as? String) == "committed 3.0.0" ? s : nil
            }
            #expect(shownV3 != nil, "device show never reported v3 committed: \(controller.show(id)["update"] ?? "-")")
            print("fleet: v3 retried after retry-update and committed: \(v3Committed?.text ?? "-")")
            guard let v3Committed else { return }

            // (f) v4 fails its own health check, controller up all along: it falls back by itself
            // and the controller hears why.
            try controller.admin(["device", "set-os", id, "--bundle", v4, "--json"])
            let v4Failed = try #require(live.wait(for: "update: test of version=4.0.0 failed", after: v3Committed.index,
                                                  timeout: Double(Self.testWindowSeconds) + 600), "\(live.console.suffix(4000))")
            let v4FellBack = try #require(live.wait(for: "update: fell back from IMGB version=4.0.0", after: v4Failed.index, timeout: 300),
                                          "\(live.console.suffix(3000))")
            #expect(live.wait(for: "outpost: ready slot=IMGA version=3.0.0", after: v4Failed.index, timeout: 5) != nil)
            print("fleet: \(v4FellBack.text)")
            let shownV4 = Self.poll(180) { () -> String? in
                let s = controller.show(id)
                guard (s["version"] as? String) == "3.0.0", ((s["update"] as? String) ?? "").hasPrefix("failed 4.0.0") else { return nil }
                return ((s["info"] as? [String: Any])?["update"] as? [String: Any])?["reason"] as? String ?? ""
            }
            #expect(shownV4?.contains("deliberately broken") == true,
                    "device show never reported v4 failed with its reason: \((controller.show(id)["info"] as? [String: Any])?["update"] ?? "-")")
            print("fleet: v4 failed its health check and fell back: \(shownV4 ?? "-")")

            // (g) A network config that cuts the device off from its controller (a static address on
            // a subnet the host's user-mode network does not serve) is rolled back and reported.
            let cutOff = #"{"testTime": 20, "ports": {"eth0": {"mode": "static", "address": "10.0.9.15/24", "gateway": "10.0.9.2", "cost": 10}}}"#
            let network = h.dir + "/cut-off.json"
            try cutOff.write(toFile: network, atomically: false, encoding: .utf8)
            let beforePush = live.lines.count
            try controller.admin(["device", "set-network", id, network, "--json"])
            let rolledBack = try #require(live.wait(for: "network: pushed config rolled back: not accepted within 20.0 seconds (eth0:",
                                                    after: beforePush, timeout: 180), "\(live.console.suffix(3000))")
            let pushShown = Self.poll(180) { () -> [String: Any]? in
                let push = (controller.show(id)["info"] as? [String: Any])?["networkPush"] as? [String: Any]
                return push?["outcome"] as? String == "ROLLED_BACK" ? push : nil
            }
            #expect((pushShown?["reason"] as? String)?.contains("not accepted within 20.0 seconds") == true,
                    "device show never reported the rollback: \(controller.show(id)["info"] ?? "-")")
            print("fleet: cut-off network config: \(rolledBack.text)")

        }

        /// Issue 14 in QEMU: a staged rollout over the real device and four simulated ones (API
        /// clients in this test that report committed at once), selected by a label, in two waves:
        /// every wave completes and the real device runs 5.0.0 committed. Its identity is the TPM's.
        @Test func aStagedRolloutMovesTheRealDeviceWithSimulatedOnes() throws {
            let h = try Harness("rollout")
            defer { h.cleanup() }
            guard FileManager.default.fileExists(atPath: Self.controller) else { throw Harness.Missing(path: Self.controller) }
            let port = try freeLoopbackPort()
            // 10.0.2.2 for the guest (the URL in CONFIG), 127.0.0.1 for the simulated devices.
            let (data, config) = try Self.managedImage(h, hosts: ["10.0.2.2", "127.0.0.1"], port: port)
            let v5 = try UpdateTests.bundle(h, version: "5.0.0", security: 5)
            let controller = Controller(data: data, port: port)
            try controller.start()
            defer { controller.stop() }
            let live = try Harness.LiveBoot(h, timeout: 900, consoleInput: true)
            defer {
                try? live.monitorCommand("quit")
                _ = live.waitForExit(timeout: 30)
            }
            let ready = try #require(live.wait(for: "outpost: ready slot=IMGA version=1.0.0", timeout: 300),
                                     "\(live.console.suffix(4000))")
            // QEMU's swtpm is the device's TPM: the identity is made there, not in a file.
            let identity = live.wait(for: "fleet: identity: ", timeout: 120)
            #expect(identity?.text.contains("outpost: fleet: identity: device key in the TPM (/dev/tpmrm0)") == true,
                    "\(identity?.text ?? "no identity line") \(live.console.suffix(2000))")
            let id = try #require(Self.poll(180) { () -> String? in
                controller.devices().first { ($0["slot"] as? String) == "IMGA" }?["id"] as? String
            }, "the device never registered: \(live.console.suffix(3000))")
            try controller.admin(["device", "set-intervals", id, "--config", "5", "--json"])

            let simulated = try blocking { try await SimulatedDevices(count: 4, url: "https://127.0.0.1:\(port)", config: config) }
            simulated.start()
            defer { try? blocking { await simulated.stop() } }
            for device in [id] + simulated.ids { try controller.admin(["device", "label", device, "ring=qemu", "--json"]) }
            let rollout = try #require(try controller.admin(["rollout", "create", "--bundle", v5, "--select", "ring=qemu",
                                                             "--waves", "40%,100%", "--soak", "5s", "--deadline", "20m",
                                                             "--max-failures", "0%", "--json"]) as? [String: Any])
            let rolloutID = try #require(rollout["id"] as? String, "\(rollout)")
            #expect(rollout["devices"] as? Int == 5, "\(rollout)")
            let v5Committed = live.wait(for: "update: committed version=5.0.0 slot=IMGB", after: ready.index,
                                        timeout: Double(Self.testWindowSeconds) + 600)
            #expect(v5Committed != nil, "\(live.console.suffix(3000))")
            let finished = Self.poll(240) { () -> [String: Any]? in
                let status = (try? controller.admin(["rollout", "status", rolloutID, "--json"])) as? [String: Any]
                return ["completed", "halted", "aborted"].contains(status?["state"] as? String ?? "") ? status : nil
            }
            #expect(finished?["state"] as? String == "completed", "rollout: \(finished ?? [:])")
            #expect(finished?["committed"] as? Int == 5, "rollout: \(finished ?? [:])")
            #expect(controller.show(id)["version"] as? String == "5.0.0")
            print("fleet: rollout \(rolloutID) \(finished?["state"] ?? "-"): \(finished?["committed"] ?? "-")/5 committed")
        }
    }
}
