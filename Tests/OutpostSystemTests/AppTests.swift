import Foundation
import OutpostTestSupport
import Testing

/// App instances in the real image: CONFIG's apps.json names the boot-counter app
/// (Tests/OutpostAppsTests/payloads/bootcounter.S, assembled here), its image is served by a
/// Range server on the host's loopback (10.0.2.2 from the guest), and the device downloads,
/// verifies and runs it in the slot's QEMU, nested under TCG. Everything is driven through the
/// serial console, as a technician at the device would. The counter keeps its disks in the
/// device's vault ("vault": true; swtpm and the release key's approvals open it), the read-only
/// app on plain PERSIST, and PERSIST is read back after the power-off to show where each lives.
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

        /// What one `app console counter` showed: the latest `---- outpost: QEMU start N ----`
        /// marker and the last `outpost-app: boot M` line after it (nil until the guest printed one).
        struct Run: Equatable {
            var start: Int
            var boot: Int?
        }

        /// Types `app console counter` until its latest run printed a boot line and `accept` takes
        /// it, at most `attempts` times 10 s. The console log keeps earlier runs, so only what follows
        /// the last start marker counts.
        static func appConsole(_ live: Harness.LiveBoot, attempts: Int = 12, until accept: (Run) -> Bool) throws -> Run? {
            var last: Run?
            for _ in 0..<attempts {
                let mark = live.lines.count
                try live.type("app console counter\n")
                guard live.wait(for: "app counter console: ", after: mark, timeout: 10) != nil else { continue }
                Thread.sleep(forTimeInterval: 1)  // the rest of the 20-line tail
                var run: Run?
                for line in live.lines[mark...].map(\.text) {
                    guard let range = line.range(of: "app counter console: ") else { continue }
                    let text = line[range.upperBound...]
                    if let n = Self.number(after: "---- outpost: QEMU start ", in: text) {
                        run = Run(start: n, boot: nil)
                    } else if let n = Self.number(after: "outpost-app: boot ", in: text), run != nil {
                        run?.boot = n
                    }
                }
                last = run
                if let run, run.boot != nil, accept(run) { return run }
                Thread.sleep(forTimeInterval: 5)
            }
            Issue.record("the app's console never showed an accepted boot; last seen \(String(describing: last)):\n\(live.console.suffix(2000))")
            return nil
        }

        static func number(after prefix: String, in text: Substring) -> Int? {
            guard let range = text.range(of: prefix) else { return nil }
            return Int(text[range.upperBound...].prefix(while: \.isNumber))
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
            {"apps": [{"name": "counter", "activate": true, "vault": true,
              "manifest": {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "counter", "vmmode": "HV_HVM",
                "images": [{"imagename": "boot", "maxsize": 16, "maxsizeUnit": "MB", "readonly": false,
                            "preserve": false, "target": "Disk", "drvtype": "HDD"}],
                "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
              "images": [{"name": "boot", "url": "http://10.0.2.2:\(server.port)/counter.raw", "sha256": "\(sha256)",
                          "size": \(1 << 20)}]},
             {"name": "ro", "activate": true,
              "manifest": {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "ro", "vmmode": "HV_HVM",
                "images": [{"imagename": "boot", "maxsize": 16, "maxsizeUnit": "MB", "readonly": true,
                            "preserve": false, "target": "Disk", "drvtype": "HDD"}],
                "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]},
              "images": [{"name": "boot", "url": "http://10.0.2.2:\(server.port)/counter.raw", "sha256": "\(sha256)",
                          "size": \(1 << 20)}]}]}
            """.write(toFile: config + "/apps.json", atomically: false, encoding: .utf8)
            // The counter keeps its disks in the vault (opened with the release key's approvals
            // and swtpm); "ro" keeps them on plain PERSIST.
            try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--config", config, "--slot", Harness.out + "/slot.img",
                            "--efi", Harness.out + "/efi", "--output", h.image,
                            "--vault-key", Harness.out + "/keys/dev.key.pem", "--security-version", "1"])

            let live = try Harness.LiveBoot(h, timeout: 1500, consoleInput: true)
            defer { _ = live.waitForExit(timeout: 5) }
            let ready = live.wait(for: "outpost: ready ", timeout: 300)
            try #require(ready != nil, "\(live.console.suffix(3000))")
            #expect(live.wait(for: "outpost: apps: 2 configured (apps.json): counter, ro", timeout: 60) != nil, "\(live.console.suffix(3000))")

            // Downloaded from the host, verified, on an overlay, booted: nested TCG boots it in seconds.
            let running = live.wait(for: "outpost: apps: counter: running", after: ready?.index ?? 0, timeout: 240)
            try #require(running != nil, "the app never ran:\n\(live.console.suffix(3000))")
            #expect(server.requests().count >= 1, "the image came from the host's server")
            // The same image, read-only for the second app (one verified copy on PERSIST): its write is refused.
            var refused = false
            for _ in 0..<12 where !refused {
                let mark = live.lines.count
                try live.type("app console ro\n")
                refused = live.wait(for: "app ro console: outpost-app: write refused", after: mark, timeout: 10) != nil
            }
            #expect(refused, "the readonly disk refused the boot counter's write:\n\(live.console.suffix(2000))")
            try Self.command(live, "app stop ro", reply: "app ro: halted")
            let first = try Self.appConsole(live) { $0.boot == 1 }
            #expect(first != nil)
            try Self.command(live, "status", reply: "app counter: running pid=")

            // Restart keeps the disk: boot 2.
            try Self.command(live, "app restart counter", reply: "app counter: restarted on its disks")
            let second = try Self.appConsole(live) { $0.start > (first?.start ?? 0) && $0.boot == 2 }
            #expect(second != nil)

            // A snapshot at boot 2, another boot (3), then back to the snapshot: the next boot is 3 again, not 4.
            try Self.command(live, "app snapshot counter two", reply: "app counter: snapshot two taken")
            try Self.command(live, "app restart counter", reply: "app counter: restarted on its disks")
            let third = try Self.appConsole(live) { $0.start > (second?.start ?? 0) && $0.boot == 3 }
            #expect(third != nil)
            try Self.command(live, "app rollback counter two", reply: "app counter: rolled back to snapshot two")
            try Self.command(live, "app restart counter", reply: "app counter: restarted on its disks")
            let again = try Self.appConsole(live) { $0.start > (third?.start ?? 0) }
            #expect(again?.boot == 3, "the rolled-back counter was 2, so this boot is 3: \(String(describing: again))")

            // A killed QEMU is restarted on the same disk. SIGKILL takes QEMU's unflushed qcow2
            // metadata with it, and the boot sector never flushes (BIOS int 13h has no flush), so
            // the write of boot 3 may or may not have reached the overlay: 3 or 4, never 1.
            try Self.command(live, "app kill counter", reply: "killed; it is restarted like after a crash")
            let revived = try Self.appConsole(live) { $0.start > (again?.start ?? 0) }
            #expect(revived?.boot == 3 || revived?.boot == 4, "\(String(describing: revived))")
            try Self.command(live, "app status", reply: "app counter: running pid=")

            // Purge starts over from the image: boot 1.
            try Self.command(live, "app purge counter", reply: "app counter: purged; restarted on fresh disks")
            let purged = try Self.appConsole(live) { $0.start > (revived?.start ?? 0) && $0.boot == 1 }
            #expect(purged != nil)

            // One-line refusals.
            try Self.command(live, "app rollback counter nosuch", reply: "no snapshot named \"nosuch\"")
            try Self.command(live, "app restart nosuch", reply: "no app named \"nosuch\" (configured: counter, ro)")

            // Stop powers the guest down through ACPI; the device reports it halted.
            try Self.command(live, "app stop counter", reply: "app counter: halted (the guest powered down)")
            try Self.command(live, "status", reply: "app counter: halted (stopped by the operator)")

            // Halted snapshots go through the slot's qemu-img: the counter is 1 after the purge.
            try Self.command(live, "app snapshot counter cold", reply: "app counter: snapshot cold taken (halted: its disks)")
            try Self.command(live, "app snapshots counter", reply: "app counter: snapshots: cold")
            try Self.command(live, "app start counter", reply: "app counter: started")
            let warm = try Self.appConsole(live) { $0.start > (purged?.start ?? 0) && $0.boot == 2 }
            #expect(warm != nil)
            try Self.command(live, "app stop counter", reply: "app counter: halted (the guest powered down)")
            try Self.command(live, "app rollback counter cold", reply: "app counter: rolled back to snapshot cold (halted")
            try Self.command(live, "app start counter", reply: "app counter: started")
            let back = try Self.appConsole(live) { $0.start > (warm?.start ?? 0) }
            #expect(back?.boot == 2, "the halted rollback brought the counter back to 1: \(String(describing: back))")
            try Self.command(live, "app stop counter", reply: "app counter: halted (the guest powered down)")
            try Self.command(live, "app delete-snapshot counter cold", reply: "app counter: snapshot cold deleted")
            try Self.command(live, "app snapshots counter", reply: "app counter: no snapshots")
            try live.monitorCommand("system_powerdown")
            #expect(live.waitForExit(timeout: 120), "no orderly power-off")

            // On plain PERSIST (read by debugfs after the power-off): the vault's area and the
            // plain app's instance; the vault app's overlay is not there, only inside the area.
            let persist = try AttestationTests.extractPartition(h.image, name: "PERSIST", to: h.dir + "/persist.img")
            let instances = try Harness.sh(["debugfs", "-R", "ls -p /apps/instances", persist]).stdout
            #expect(instances.contains("/ro/") && !instances.contains("/counter/"), "plain PERSIST's instances: \(instances)")
            let vault = try Harness.sh(["debugfs", "-R", "ls -p /vault", persist]).stdout
            #expect(vault.contains("/area.img/"), "PERSIST's /vault: \(vault)")
        }
    }
}
