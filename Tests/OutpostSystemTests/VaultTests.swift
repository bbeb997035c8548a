import Foundation
import Testing

/// The vault of issue 13 in QEMU with swtpm, no controller anywhere: the key
/// is sealed at the first boot, a secret put then is read back after an
/// update from media to IMGB (which unseals with the approvals its bundle
/// carried, offline), the commit raises the TPM floor, and the old slot,
/// booted by hand afterwards, no longer opens the vault, while the data stays.
extension QEMU {
    @Suite("The vault in QEMU", .serialized)
    struct VaultTests {
        static let secret = "hello from v1"

        /// One boot in the background with the serial console attached.
        static func live(_ h: Harness, disks: [String] = []) throws -> Harness.LiveBoot {
            try Harness.LiveBoot(h, timeout: 700, arguments: disks.flatMap { ["--disk", $0] }, consoleInput: true)
        }

        static func powerOff(_ live: Harness.LiveBoot) {
            try? live.monitorCommand("system_powerdown")
            _ = live.waitForExit(timeout: 90)
        }

        @Test func aSecretOutlivesAnOfflineUpdateAndTheOldSlotCannotOpenItAfterTheFloorRises() throws {
            let h = try Harness("vault")
            defer { h.cleanup() }
            // The factory image as built (vault.json signed onto CONFIG), with a 5 s test window.
            let config = h.dir + "/config"
            try Harness.sh(["cp", "-r", Harness.out + "/dev-config", config])
            try #"{"testWindowSeconds": 5}"#.write(toFile: config + "/update.json", atomically: false, encoding: .utf8)
            try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--layout", Harness.root + "/partitions/layout.json",
                            "--config", config, "--slot", Harness.out + "/slot.img", "--efi", Harness.out + "/efi",
                            "--vault-key", Harness.out + "/keys/dev.key.pem", "--security-version", "1", "--output", h.image])
            // Built before any guest runs: a TCG guest and a slot build starve each other.
            let v2 = try QEMU.UpdateTests.bundle(h, version: "2.0.0", security: 2, measured: true)
            let media = try QEMU.UpdateTests.media(h, v2)
            let sha = try Harness.sh(["sh", "-c", "printf %s \"$0\" | sha256sum", Self.secret]).stdout
                .split(separator: " ").first.map(String.init) ?? ""

            // Boot 1, IMGA 1.0.0: enrolment, then a secret.
            do {
                let live = try Self.live(h)
                defer { Self.powerOff(live) }
                let vault = try #require(live.wait(for: "outpost: vault: ", timeout: 300), "\(live.console.suffix(3000))")
                #expect(vault.text.contains("vault: unlocked: enrolled and opened for IMGA version 1.0.0 (security version 1, floor 1"),
                        "\(vault.text)")
                let ready = try #require(live.wait(for: "outpost: ready slot=IMGA version=1.0.0", timeout: 120))
                try live.type("vault put greeting \(Self.secret)\r")
                let stored = live.wait(for: "vault: stored greeting", after: ready.index, timeout: 60)
                #expect(stored?.text.hasSuffix("vault: stored greeting (\(Self.secret.utf8.count) bytes)") == true,
                        "\(stored?.text ?? "no answer") \(live.console.suffix(2000))")
            }

            // Boots 2 and 3: the update from media installs 2.0.0 into IMGB and restarts; IMGB
            // unseals with the approvals its bundle carried, reads the secret, and commits.
            do {
                let live = try Self.live(h, disks: [media])
                defer { Self.powerOff(live) }
                let installed = try #require(live.wait(for: "update: installed version=2.0.0 slot=IMGB", timeout: 400),
                                             "\(live.console.suffix(3000))")
                let vault = try #require(live.wait(for: "outpost: vault: ", after: installed.index, timeout: 300),
                                         "\(live.console.suffix(3000))")
                #expect(vault.text.contains("vault: unlocked: opened for IMGB version 2.0.0 (security version 2, floor 1"),
                        "\(vault.text)")
                let ready = try #require(live.wait(for: "outpost: ready slot=IMGB version=2.0.0", after: installed.index, timeout: 120))
                try live.type("vault check greeting\r")
                let check = live.wait(for: "vault: greeting: ", after: ready.index, timeout: 60)
                #expect(check?.text.hasSuffix("vault: greeting: \(Self.secret.utf8.count) bytes, sha256 \(sha)") == true,
                        "\(check?.text ?? "no answer") \(live.console.suffix(2000))")
                let committed = try #require(live.wait(for: "update: committed version=2.0.0 slot=IMGB", after: ready.index,
                                                       timeout: 300), "\(live.console.suffix(3000))")
                let raised = live.wait(for: "vault: security floor raised", after: committed.index, timeout: 60)
                #expect(raised?.text.hasSuffix("vault: security floor raised from 1 to 2") == true, "\(raised?.text ?? "none")")
            }

            // The update engine kept IMGB's approvals on PERSIST before it marked the slot.
            let kept = try h.persistFile("/vault/approvals-IMGB.json")
            #expect(kept.contains("\"osVersion\" : \"2.0.0\"") && kept.contains("\"securityVersion\" : 2"), "\(kept)")

            // Boot 4: someone makes the old slot (1.0.0, security version 1) boot first. Its
            // approvals are signed by the right key for the right PCRs, but the floor is 2 now.
            try h.cgptSet(2, "0x103")
            do {
                let live = try Self.live(h)
                defer { Self.powerOff(live) }
                let vault = try #require(live.wait(for: "outpost: vault: ", timeout: 300), "\(live.console.suffix(3000))")
                #expect(vault.text.contains("vault: locked: "), "\(vault.text)")
                #expect(vault.text.contains("floor"), "\(vault.text)")
                let ready = try #require(live.wait(for: "outpost: ready slot=IMGA version=1.0.0", timeout: 120))
                try live.type("vault check greeting\r")
                let refused = live.wait(for: "vault: the vault is not open", after: ready.index, timeout: 60)
                #expect(refused != nil, "\(live.console.suffix(2000))")
            }

            // Boot 5: IMGB again; the locked boot lost nothing.
            try h.cgptSet(2, "0x0")
            do {
                let live = try Self.live(h)
                defer { Self.powerOff(live) }
                let vault = try #require(live.wait(for: "outpost: vault: ", timeout: 300), "\(live.console.suffix(3000))")
                #expect(vault.text.contains("vault: unlocked: opened for IMGB version 2.0.0 (security version 2, floor 2"),
                        "\(vault.text)")
                let ready = try #require(live.wait(for: "outpost: ready slot=IMGB version=2.0.0", timeout: 120))
                try live.type("vault check greeting\r")
                let check = live.wait(for: "vault: greeting: ", after: ready.index, timeout: 60)
                #expect(check?.text.hasSuffix("vault: greeting: \(Self.secret.utf8.count) bytes, sha256 \(sha)") == true,
                        "\(check?.text ?? "no answer") \(live.console.suffix(2000))")
            }
        }
    }
}
