import Foundation
import Testing
import OutpostDisk

/// Over-the-air updates in QEMU: v1 → v2 commits; v3 (built to fail its
/// health check) falls back to v2 by itself; v4 (a kernel that panics at
/// boot) falls back too. Bundles arrive on update media (a second drive).
extension QEMU {
    @Suite("Updates in QEMU", .serialized)
    struct UpdateTests {
        /// Builds a version of the slot from the root tree ./build.sh assembled,
        /// with `tweak` applied to a copy of the root or initramfs, and signs it.
        /// With `measured`, the bundle also carries the slot's predicted PCR 8/9 and the vault's
        /// approvals for them: an image of the slot on the same layout predicts them.
        static func bundle(_ h: Harness, version: String, security: Int,
                           tweakRoot: (String) throws -> Void = { _ in },
                           initramfs: String? = nil, measured: Bool = false) throws -> String {
            let work = h.dir + "/v\(version)"
            try Harness.sh(["cp", "-a", Harness.out + "/slot-work/root", work + "-root"])
            try "NAME=Outpost\nVERSION=\(version)\n".write(toFile: work + "-root/etc/outpost-release", atomically: false, encoding: .utf8)
            try tweakRoot(work + "-root")
            let kernel = try Harness.sh(["sh", "-c", "ls /var/cache/outpost/kernels/*/boot/vmlinuz-* ${OUTPOST_CACHE:-/var/cache/outpost}/kernels/*/boot/vmlinuz-* 2>/dev/null | head -1"]).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try Harness.sh([Harness.outpost, "slot", "build", "--quiet", "--kernel", kernel,
                            "--initramfs", initramfs ?? Harness.out + "/slot-work/initrd.img", "--root-dir", work + "-root",
                            "--image-version", version, "--output", work + ".img"])
            var measurements: [String] = []
            if measured {
                try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--layout", Harness.root + "/partitions/layout.json",
                                "--config", Harness.out + "/dev-config", "--slot", work + ".img", "--efi", Harness.out + "/efi",
                                "--measurements", work + ".measurements.json", "--output", work + ".disk.img"])
                try FileManager.default.removeItem(atPath: work + ".disk.img")
                measurements = ["--measurements", work + ".measurements.json"]
            }
            try Harness.sh([Harness.outpost, "bundle", "create", "--quiet", "--key", Harness.out + "/keys/dev.key.pem",
                            "--image-version", version, "--slot", work + ".img", "--security-version", String(security),
                            "--output", work + ".bundle"] + measurements)
            return work + ".bundle"
        }

        /// A FAT "USB stick" labelled OUTPOSTUPD holding one bundle.
        static func media(_ h: Harness, _ bundle: String) throws -> String {
            let img = bundle + ".media"
            let size = (try FileManager.default.attributesOfItem(atPath: bundle)[.size] as? Int ?? 0) / 1024 + 16384
            try Harness.sh(["mkfs.vfat", "-C", "-n", "OUTPOSTUPD", img, String(size)])
            try Harness.sh(["mcopy", "-i", img, bundle, "::/update.bundle"])
            return img
        }

        /// One boot with update media attached, until `marker`; then `update
        /// status` typed on the serial console, and the power button.
        struct Leg {
            var lines: [(at: Date, text: String)]
            var console: String { lines.map(\.text).joined(separator: "\n") }
            /// The console lines after `update status` was typed.
            var status: String
            func line(containing s: String) -> String? { lines.first { $0.text.contains(s) }?.text }
            func at(_ s: String) -> Date? { lines.first { $0.text.contains(s) }?.at }
        }

        static func liveLeg(_ h: Harness, media: String, until marker: String) throws -> Leg {
            let live = try Harness.LiveBoot(h, timeout: 400, arguments: ["--disk", media], consoleInput: true)
            defer { _ = live.waitForExit(timeout: 5) }
            var status = ""
            if let hit = live.wait(for: marker, timeout: 390) {
                try live.type("update status\n")
                if let end = live.wait(for: "outpost: last result:", after: hit.index, timeout: 30) {
                    status = live.lines[hit.index...end.index].map(\.text).joined(separator: "\n")
                }
            }
            try? live.monitorCommand("system_powerdown")
            _ = live.waitForExit(timeout: 90)
            return Leg(lines: live.lines, status: status)
        }

        func state(_ h: Harness) throws -> String { try h.persistFile("/update/update-state.json") }

        @Test func v2CommitsV3FallsBackByItselfAndAPanickingV4FallsBackToo() throws {
            let h = try Harness("update")
            defer { h.cleanup() }
            // A CONFIG with a short test window; everything else as built.
            let config = h.dir + "/config"
            try Harness.sh(["cp", "-r", Harness.out + "/dev-config", config])
            try #"{"testWindowSeconds": 5}"#.write(toFile: config + "/update.json", atomically: false, encoding: .utf8)
            try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--config", config, "--slot", Harness.out + "/slot.img",
                            "--efi", Harness.out + "/efi", "--output", h.image])

            // v1 → v2: installed from media, reboot, trial, commit; then `update
            // status` typed on the serial console.
            let v2 = try Self.bundle(h, version: "2.0.0", security: 2)
            let b1 = try Self.liveLeg(h, media: try Self.media(h, v2), until: "update: committed")
            #expect(b1.line(containing: "update: installed version=2.0.0 slot=IMGB") != nil, "\(b1.console.suffix(4000))")
            #expect(b1.line(containing: "outpost: ready slot=IMGB version=2.0.0") != nil, "\(b1.console.suffix(6000))")
            #expect(b1.line(containing: "update: committed version=2.0.0 slot=IMGB") != nil)
            #expect(b1.status.contains("outpost: booted: IMGB"), "\(b1.status)")
            #expect(b1.status.contains("outpost: slot IMGB (partition 3): active"), "\(b1.status)")
            #expect(b1.status.contains("outpost: slot IMGA (partition 2): unused"), "\(b1.status)")
            #expect(b1.status.contains("outpost: committed version: 2.0.0"), "\(b1.status)")
            if let installing = b1.at("update: installing"), let committed = b1.at("update: committed") {
                // The wall time of an update without its test window (benchmark figure, not asserted).
                let seconds = committed.timeIntervalSince(installing) - 5
                print(String(format: "BENCH update install-to-committed=%.1fs (test window of 5 s excluded; write, reboot, boot, commit)", seconds))
            }
            #expect(try h.cgptAttr(3) == "0x102")
            #expect(try h.cgptAttr(2) == "0")
            let s2 = try state(h)
            #expect(s2.contains(#""committedVersion":"2.0.0""#) || s2.contains(#""committedVersion" : "2.0.0""#), "\(s2)")

            // v3 fails its health check during the test window → back to v2 by itself.
            let v3 = try Self.bundle(h, version: "3.0.0", security: 3, tweakRoot: { root in
                try "component selftest: deliberately broken test build\n"
                    .write(toFile: root + "/etc/outpost/selftest-fail", atomically: false, encoding: .utf8)
            })
            let b3 = try Self.liveLeg(h, media: try Self.media(h, v3), until: "update: fell back")
            #expect(b3.line(containing: "update: installed version=3.0.0 slot=IMGA") != nil, "\(b3.console.suffix(4000))")
            #expect(b3.line(containing: "outpost: ready slot=IMGA version=3.0.0") != nil)
            #expect(b3.line(containing: "update: test of version=3.0.0 failed") != nil)
            #expect(b3.line(containing: "update: fell back from IMGA version=3.0.0") != nil)
            #expect(try h.cgptAttr(3) == "0x102")
            #expect(try h.cgptAttr(2) == "0")
            #expect(b3.status.contains("outpost: failed: 3.0.0 in IMGA: component selftest: deliberately broken"), "\(b3.status)")
            #expect(b3.status.contains("outpost: committed version: 2.0.0"), "\(b3.status)")
            let s3 = try state(h)
            #expect(s3.contains("3.0.0") && s3.contains("deliberately broken"), "\(s3)")

            // v4's kernel panics at boot (no working init) → GRUB returns to v2.
            let panicInit = h.dir + "/panic-initrd"
            try FileManager.default.createDirectory(atPath: panicInit, withIntermediateDirectories: true)
            try "#!/nonexistent/interpreter\n".write(toFile: panicInit + "/init", atomically: false, encoding: .utf8)
            try Harness.sh(["sh", "-c", "cd \(panicInit) && chmod +x init && echo init | cpio -o -H newc --quiet | gzip -n > ../panic-initrd.img"])
            let v4 = try Self.bundle(h, version: "4.0.0", security: 4, initramfs: h.dir + "/panic-initrd.img")
            let b4 = try h.boot(until: ["update: fell back", "outpost: error:"], timeout: 400, disks: [try Self.media(h, v4)])
            #expect(b4.line(containing: "update: installed version=4.0.0 slot=IMGA") != nil, "\(b4.console.suffix(4000))")
            #expect(b4.console.contains("Kernel panic"))
            #expect(b4.line(containing: "update: fell back from IMGA version=4.0.0") != nil)
            #expect(b4.line(containing: "outpost: ready slot=IMGB version=2.0.0") != nil)
            #expect(try h.cgptAttr(3) == "0x102")
        }
    }
}
