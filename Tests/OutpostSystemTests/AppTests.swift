import Foundation
import OutpostTestSupport
import Testing

/// App instances in the real image: CONFIG's apps.json names the boot-counter app
/// (Tests/OutpostAppsTests/payloads/bootcounter.S, assembled here), its image is served by a
/// Range server on the host's loopback (10.0.2.2 from the guest), and the device downloads,
/// verifies and runs it in the slot's QEMU, nested under TCG. Everything is driven through the
/// serial console, as a technician at the device would.
extension QEMU {
    @Suite("App instances in QEMU, nested", .serialized)
    struct AppTests {
        static let payload = Harness.root + "/Tests/OutpostAppsTests/payloads/bootcounter.S"

        /// The boot-counter disk: the 512-byte program, then zeros to 1 MiB (sector 1 is the counter).
        static func bootCounterDisk(_ dir: String) throws -> String {
            let object = dir + "/bootcounter.o", binary = dir + "/bootcounter.bin", disk = dir + "/counter.raw"
            try Harness.sh(["as", "--32", "-o", object, payload])
            try Harness.sh(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o", binary, object])
            var image = try Data(contentsOf: URL(fileURLWithPath: binary))
            #expect(image.count == 512)
            image.append(Data(count: (1 << 20) - image.count))
            try image.write(to: URL(fileURLWithPath: disk))
            return disk
        }

        /// Types `app console counter` until a line after the typing shows `text` (the app's
        /// console is on PERSIST, not the device's), at most `attempts` times 10 s.
        static func appConsole(_ live: Harness.LiveBoot, shows text: String, after from: Int, attempts: Int = 12)
            throws -> Int? {
            for _ in 0..<attempts {
                let mark = live.lines.count
                try live.type("app console counter\n")
                if let seen = live.wait(for: "app counter console: \(text)", after: max(mark, from), timeout: 10) {
                    return seen.index
                }
            }
            return nil
        }

        /// Types `command` and waits for a line containing `reply`.
        @discardableResult
        static func command(_ live: Harness.LiveBoot, _ command: String, reply: String, timeout: Double = 120) throws -> Int? {
            let mark = live.lines.count
            try live.type(command + "\n")
            let seen = live.wait(for: reply, after: mark, timeout: timeout)
            #expect(seen != nil, "\(command): no \"\(reply)\":\n\(live.console.suffix(2500))")
            return seen?.index
        }

        @Test func theDeviceRunsTheBootCounterAppAndRestartsPurgesRollsBackAndRevivesIt() throws {
            let h = try Harness("apps")
            defer { h.cleanup() }
            let www = h.dir + "/www"
            try FileManager.default.createDirectory(atPath: www, withIntermediateDirectories: true)
            let disk = try Self.bootCounterDisk(www)
            let sha256 = try Harness.sh(["sha256sum", disk]).stdout.split(separator: " ").first.map(String.init) ?? ""
            let server = try RangeFileServer(root: www, lifetime: 1800)

            let config = h.dir + "/config"
            try Harness.sh(["cp", "-r", Harness.out + "/dev-config", config])
            try """
            {"apps": [{"name": "counter", "activate": true,
              "manifest": {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "counter", "vmmode": "HV_HVM",
                "images": [{"imagename": "boot", "maxsize": 16, "maxsizeUnit": "MB", "readonly": false,
                            "preserve": false, "target": "Disk", "drvtype": "HDD"}],
                "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
              "images": [{"name": "boot", "url": "http://10.0.2.2:\(server.port)/counter.raw", "sha256": "\(sha256)",
                          "size": \(1 << 20)}]}]}
            """.write(toFile: config + "/apps.json", atomically: false, encoding: .utf8)
            try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--config", config, "--slot", Harness.out + "/slot.img",
                            "--efi", Harness.out + "/efi", "--output", h.image])

            let live = try Harness.LiveBoot(h, timeout: 1500, consoleInput: true)
            defer { _ = live.waitForExit(timeout: 5) }
            let ready = live.wait(for: "outpost: ready ", timeout: 300)
            try #require(ready != nil, "\(live.console.suffix(3000))")
            #expect(live.wait(for: "outpost: apps: 1 configured: counter", timeout: 60) != nil, "\(live.console.suffix(3000))")

            // Downloaded from the host, verified, on an overlay, booted: nested TCG boots it in seconds.
            let running = live.wait(for: "outpost: apps: counter: running", after: ready?.index ?? 0, timeout: 240)
            try #require(running != nil, "the app never ran:\n\(live.console.suffix(3000))")
            #expect(server.requests().count >= 1, "the image came from the host's server")
            let boot1 = try Self.appConsole(live, shows: "outpost-app: boot 1", after: running?.index ?? 0)
            #expect(boot1 != nil, "\(live.console.suffix(2000))")
            try Self.command(live, "status", reply: "app counter: running pid=")

            // Restart keeps the disk: boot 2.
            let restarted = try Self.command(live, "app restart counter", reply: "app counter: restarted on its disks")
            #expect(try Self.appConsole(live, shows: "outpost-app: boot 2", after: restarted ?? 0) != nil)

            // A snapshot at boot 2, another boot (3), then back to the snapshot: the next boot is 3 again, not 4.
            try Self.command(live, "app snapshot counter two", reply: "app counter: snapshot two taken")
            let third = try Self.command(live, "app restart counter", reply: "app counter: restarted on its disks")
            #expect(try Self.appConsole(live, shows: "outpost-app: boot 3", after: third ?? 0) != nil)
            try Self.command(live, "app rollback counter two", reply: "app counter: rolled back to snapshot two")
            let afterRollback = try Self.command(live, "app restart counter", reply: "app counter: restarted on its disks")
            let again = try Self.appConsole(live, shows: "outpost-app: boot ", after: afterRollback ?? 0)
            #expect(again.map { live.lines[$0].text.hasSuffix("outpost-app: boot 3") } == true,
                    "the rolled-back counter was 2, so this boot is 3:\n\(live.console.suffix(1500))")

            // A killed QEMU is restarted on the same disk: boot 4.
            let killed = try Self.command(live, "app kill counter", reply: "killed; it is restarted like after a crash")
            #expect(try Self.appConsole(live, shows: "outpost-app: boot 4", after: killed ?? 0) != nil,
                    "\(live.console.suffix(2000))")
            try Self.command(live, "app status", reply: "app counter: running pid=")

            // Purge starts over from the image: boot 1.
            let purged = try Self.command(live, "app purge counter", reply: "app counter: purged; restarted on fresh disks")
            #expect(try Self.appConsole(live, shows: "outpost-app: boot 1", after: purged ?? 0) != nil)

            // One-line refusals.
            try Self.command(live, "app rollback counter nosuch", reply: "no snapshot named \"nosuch\"")
            try Self.command(live, "app restart nosuch", reply: "no app named \"nosuch\" (configured: counter)")

            // Stop powers the guest down through ACPI; the device reports it halted.
            try Self.command(live, "app stop counter", reply: "app counter: halted (the guest powered down)")
            try Self.command(live, "status", reply: "app counter: halted (stopped by the operator)")
            try live.monitorCommand("system_powerdown")
            #expect(live.waitForExit(timeout: 120), "no orderly power-off")
        }
    }
}
