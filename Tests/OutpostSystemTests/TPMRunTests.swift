import Foundation
import OutpostTestSupport
import Testing

extension QEMU.FleetTests {
    /// The development loop of issue 13: `outpost run` keeps the TPM's state beside the image
    /// (IMAGE.tpm), so a managed device keeps its TPM-held key from one run to the next: the
    /// second run loads it, does not register again, and reports to the controller as the same
    /// device. `--no-tpm` boots a copy of the same image with no TPM: that device registers with
    /// its file identity and says why, on the console and in `status`.
    @Test func theTPMStaysWithTheImageAcrossRunsAndWithoutOneTheFileIdentitySaysSo() throws {
        let h = try Harness("tpm-runs")
        defer { h.cleanup() }
        guard FileManager.default.fileExists(atPath: Self.controller) else { throw Harness.Missing(path: Self.controller) }
        let port = try freeLoopbackPort()
        let (data, config) = try Self.managedImage(h, hosts: ["10.0.2.2"], port: port)
        // A second device from the same CONFIG, for the run without a TPM.
        let other = try Harness("tpm-none")
        defer { other.cleanup() }
        try Harness.sh([Harness.outpost, "image", "build", "--quiet", "--config", config, "--slot", Harness.out + "/slot.img",
                        "--efi", Harness.out + "/efi", "--output", other.image])
        let controller = Controller(data: data, port: port)
        try controller.start()
        defer { controller.stop() }

        // Run 1: the key is made in the TPM, the device registers; then an orderly power-off.
        let id: String
        do {
            let live = try Harness.LiveBoot(h, timeout: 600, consoleInput: true)
            defer {
                try? live.monitorCommand("quit")
                _ = live.waitForExit(timeout: 30)
            }
            let identity = live.wait(for: "fleet: identity: ", timeout: 300)
            #expect(identity?.text.contains("outpost: fleet: identity: device key in the TPM (/dev/tpmrm0)") == true,
                    "\(identity?.text ?? "no identity line") \(live.console.suffix(3000))")
            _ = try #require(live.wait(for: "fleet: registered with", timeout: 180), "\(live.console.suffix(3000))")
            id = try #require(Self.poll(120) { () -> String? in
                let devices = controller.devices()
                return devices.count == 1 ? devices[0]["id"] as? String : nil
            }, "the controller does not list the device: \(controller.devices())")
            try live.monitorCommand("system_powerdown")
            #expect(live.waitForExit(timeout: 120), "no orderly power-off: \(live.console.suffix(2000))")
        }
        #expect(FileManager.default.fileExists(atPath: h.image + ".tpm/tpm2-00.permall"), "no TPM state beside the image")

        // Run 2: the same TPM and key. No second registration; the controller hears from the same
        // device, which says why it last booted (the power button: user).
        do {
            let live = try Harness.LiveBoot(h, timeout: 600, consoleInput: true)
            defer {
                try? live.monitorCommand("quit")
                _ = live.waitForExit(timeout: 30)
            }
            let ready = try #require(live.wait(for: "outpost: ready slot=IMGA", timeout: 300), "\(live.console.suffix(3000))")
            #expect(ready.text.contains("last-boot=user"), "\(ready.text)")
            let identity = live.wait(for: "fleet: identity: ", timeout: 120)
            #expect(identity?.text.contains("outpost: fleet: identity: device key in the TPM (/dev/tpmrm0)") == true,
                    "\(identity?.text ?? "no identity line") \(live.console.suffix(3000))")
            let reported = Self.poll(240) { () -> [String: Any]? in
                let d = controller.devices().first { $0["id"] as? String == id }
                return d?["lastBoot"] as? String == "user" ? d : nil
            }
            #expect(reported != nil, "the device did not report its second boot: \(controller.devices()) \(live.console.suffix(3000))")
            #expect(controller.devices().count == 1, "the second run registered another device: \(controller.devices())")
            #expect(!live.lines.contains { $0.text.contains("fleet: registered with") || $0.text.contains("fleet: not started") },
                    "\(live.console.suffix(3000))")
        }

        // Run 3: another device from the same CONFIG, booted with no TPM at all.
        let live = try Harness.LiveBoot(other, timeout: 600, arguments: ["--no-tpm"], consoleInput: true)
        defer {
            try? live.monitorCommand("quit")
            _ = live.waitForExit(timeout: 30)
        }
        let vault = live.wait(for: "outpost: vault: ", timeout: 300)
        #expect(vault?.text.hasSuffix("outpost: vault: unavailable: no TPM (/dev/tpmrm0 missing); nothing is sealed") == true,
                "\(vault?.text ?? "no vault line") \(live.console.suffix(3000))")
        let identity = live.wait(for: "fleet: identity: ", timeout: 300)
        #expect(identity?.text.contains("warning: fleet: identity: no TPM: /dev/tpmrm0 missing; using the file identity") == true,
                "\(identity?.text ?? "no identity line") \(live.console.suffix(3000))")
        let registered = try #require(live.wait(for: "fleet: registered with", timeout: 180), "\(live.console.suffix(3000))")
        #expect(Self.poll(120) { controller.devices().count == 2 ? true : nil } != nil, "\(controller.devices())")
        try live.type("status\n")
        let status = live.wait(for: "identity: no TPM: /dev/tpmrm0 missing", after: registered.index, timeout: 60)
        #expect(status?.text.contains("fleet: controller") == true, "status: \(live.console.suffix(2000))")
    }
}
