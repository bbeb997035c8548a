import Foundation
import OutpostTestSupport
import Testing

/// Issue 13 in QEMU with swtpm: the device's key is in the TPM, it attests its boot to the real
/// controller before it gets its config, the quote the controller saved verifies with
/// tpm2_checkquote, and a slot whose kernel command line was changed after signing (same
/// version, its stage-2 grub.cfg edited and the slot rebuilt) fails attestation with the
/// controller naming PCR 8 and the builder's predicted value.
extension QEMU {
    @Suite("Attestation in QEMU", .serialized)
    struct AttestationTests {
        /// Rebuilds out/slot.img's payload with `extra` appended to the kernel command line
        /// (the same root, kernel, initramfs and version): the boot chain changed after signing.
        static func tamperedSlot(_ h: Harness, extra: String) throws -> String {
            let template = try String(contentsOfFile: Harness.root + "/grub/stage2.cfg.in", encoding: .utf8)
            let changed = template.replacingOccurrences(of: "  linux /vmlinuz @CMDLINE@\nelse",
                                                        with: "  linux /vmlinuz @CMDLINE@ \(extra)\nelse")
            #expect(changed != template, "the normal boot's linux line is in grub/stage2.cfg.in")
            let stage2 = h.dir + "/stage2-tampered.cfg.in"
            try changed.write(toFile: stage2, atomically: false, encoding: .utf8)
            let root = h.dir + "/tampered-root"
            try Harness.sh(["cp", "-a", Harness.out + "/slot-work/root", root])
            let kernel = try Harness.sh(["sh", "-c", "ls ${OUTPOST_CACHE:-/var/cache/outpost}/kernels/*/boot/vmlinuz-* 2>/dev/null | head -1"])
                .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let slot = h.dir + "/tampered-slot.img"
            try Harness.sh([Harness.outpost, "slot", "build", "--quiet", "--kernel", kernel, "--initramfs",
                            Harness.out + "/slot-work/initrd.img", "--root-dir", root, "--stage2", stage2,
                            "--output", slot, "--work", h.dir + "/tampered-work"])
            return slot
        }

        /// The first sector and the length in sectors of the partition named `name`, by sfdisk.
        static func partition(_ image: String, name: String) throws -> (start: Int, sectors: Int) {
            let table = try Harness.sh(["sfdisk", "--json", image]).stdout
            let json = try JSONSerialization.jsonObject(with: Data(table.utf8)) as? [String: Any]
            let partitions = ((json?["partitiontable"] as? [String: Any])?["partitions"] as? [[String: Any]]) ?? []
            let entry = try #require(partitions.first { $0["name"] as? String == name }, "no \(name) in \(table)")
            return (try #require(entry["start"] as? Int), try #require(entry["size"] as? Int))
        }

        /// Copies the partition named `name` out of `image` into the file `path` (sparse).
        static func extractPartition(_ image: String, name: String, to path: String) throws -> String {
            let (start, sectors) = try partition(image, name: name)
            try Harness.sh(["dd", "if=\(image)", "of=\(path)", "bs=512", "skip=\(start)", "count=\(sectors)",
                            "conv=sparse", "status=none"])
            return path
        }

        /// Writes `slot` over the partition named `name` of `image` (CONFIG and PERSIST stay).
        static func replacePartition(_ image: String, name: String, with slot: String) throws {
            let (start, sectors) = try partition(image, name: name)
            let size = try #require(try FileManager.default.attributesOfItem(atPath: slot)[.size] as? Int)
            try #require(size <= sectors * 512, "the slot (\(size) bytes) fits \(name) (\(sectors * 512))")
            try Harness.sh(["dd", "if=\(slot)", "of=\(image)", "bs=512", "seek=\(start)", "conv=notrunc,fsync", "status=none"])
        }

        static let secret = "s3cr3t-for-attested-boots-only"

        @Test func theDeviceAttestsWithItsTPMAndAChangedCommandLineIsNamedAsPCR8() throws {
            let h = try Harness("attest")
            defer { h.cleanup() }
            guard FileManager.default.fileExists(atPath: FleetTests.controller) else { throw Harness.Missing(path: FleetTests.controller) }
            let port = try freeLoopbackPort()
            let (data, _) = try FleetTests.managedImage(h, hosts: ["10.0.2.2"], port: port, vault: true)
            // The controller holds the signed bundle of the version the factory image runs: its
            // manifest carries the builder's PCR 8/9 predictions for each slot.
            let measurements = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Harness.out + "/measurements.json")))
            let predicted = try #require(((((measurements as? [String: Any])?["slots"] as? [String: Any])?["IMGA"] as? [String: Any])?["pcr8"]
                                          as? String)?.lowercased())
            let controller = FleetTests.Controller(data: data, port: port)
            try controller.start()
            defer { controller.stop() }
            try Harness.sh([FleetTests.controller, "bundle", "add", Harness.out + "/update.bundle", "--data", data])
            // The TPM maker: a swtpm-localca made here (its first TPM, a throwaway, creates the CA),
            // whose root and intermediate the controller trusts. `outpost run --ek-ca` then
            // manufactures the device's TPM with an EK certificate from it.
            let maker = try SoftwareTPM.EndorsementCA(directory: h.dir + "/ek-ca")
            try SoftwareTPM(stateDirectory: h.dir + "/first-tpm", endorsementCA: maker).stop()
            for certificate in [maker.rootCertificate, maker.issuerCertificate] {
                try Harness.sh([FleetTests.controller, "ek-ca", "add", certificate, "--data", data])
            }

            // Boot 1: TPM identity, attested, config served.
            var id = ""
            do {
                let live = try Harness.LiveBoot(h, timeout: 600, arguments: ["--ek-ca", maker.directory], consoleInput: true)
                defer {
                    try? live.monitorCommand("quit")
                    _ = live.waitForExit(timeout: 30)
                }
                let ready = try #require(live.wait(for: "outpost: ready slot=IMGA version=1.0.0", timeout: 300), "\(live.console.suffix(3000))")
                let identity = live.wait(for: "fleet: identity: ", after: ready.index, timeout: 120)
                #expect(identity?.text.contains("device key in the TPM (/dev/tpmrm0)") == true, "\(identity?.text ?? "none")")
                let passed = live.wait(for: "outpost: attestation: ", after: ready.index, timeout: 240)
                #expect(passed?.text.hasSuffix("outpost: attestation: passed") == true, "\(passed?.text ?? "no attestation line") \(live.console.suffix(3000))")
                id = try #require(FleetTests.poll(120) { () -> String? in
                    controller.devices().first { ($0["slot"] as? String) == "IMGA" }?["id"] as? String
                }, "the device never registered")
                let shown = try #require(try controller.admin(["device", "attestation", id, "--json"]) as? [String: Any])
                #expect(shown["attested"] as? Bool == true, "\(shown)")
                // The EK certificate `outpost run` put in the new TPM chains to the maker's root.
                #expect(shown["ekCertificate"] as? String == "verified by CN=swtpm-localca-rootca", "\(shown)")
                // A secret in the device's config reaches the attested device and lands in its vault.
                let before = live.lines.count
                _ = try controller.admin(["device", "set-secret", id, "api-token", "--value", Self.secret, "--json"])
                try controller.admin(["device", "set-intervals", id, "--config", "10", "--json"])
                let stored = live.wait(for: "fleet: secrets: 1 stored in the vault (api-token)", after: before, timeout: 240)
                #expect(stored != nil, "\(live.console.suffix(3000))")
                try live.type("vault check controller.api-token\r")
                let digest = try Harness.sh(["python3", "-c", "import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())",
                                             Self.secret]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                let checked = live.wait(for: "vault: controller.api-token: \(Self.secret.utf8.count) bytes, sha256 \(digest)",
                                        after: before, timeout: 60)
                #expect(checked != nil, "\(live.console.suffix(2000))")
                // The quote the device produced, as the controller saved it, checked by tpm2-tools.
                let saved = h.dir + "/quote"
                try Harness.sh([FleetTests.controller, "device", "attestation", id, "--data", data, "--save", saved])
                let check = try Harness.sh(["sh", saved + "/checkquote.sh"])
                print("attestation: boot 1 passed; tpm2_checkquote: \(check.stdout.prefix(200))")
                #expect(check.stdout.contains("pcrs:") || check.stdout.contains("sha256"), "\(check.stdout)")
            }

            // Boot 2: the same device, IMGA rewritten with a kernel command line the manifest does not predict.
            let slot = try Self.tamperedSlot(h, extra: "outpost.debug-shell=1")
            try Self.replacePartition(h.image, name: "IMGA", with: slot)
            let live = try Harness.LiveBoot(h, timeout: 600, consoleInput: true)
            defer {
                try? live.monitorCommand("quit")
                _ = live.waitForExit(timeout: 30)
            }
            let ready = try #require(live.wait(for: "outpost: ready slot=IMGA version=1.0.0", timeout: 300), "\(live.console.suffix(3000))")
            let failed = live.wait(for: "outpost: attestation: ", after: ready.index, timeout: 240)
            #expect(failed?.text.contains("outpost: attestation: failed: PCR 8: expected \(predicted), actual ") == true,
                    "\(failed?.text ?? "no attestation line") \(live.console.suffix(3000))")
            let verdict = try #require(FleetTests.poll(60) { () -> [String: Any]? in
                let shown = (try? controller.admin(["device", "attestation", id, "--json"])) as? [String: Any]
                let last = shown?["last"] as? [String: Any]
                return (last?["mismatches"] as? [[String: Any]])?.isEmpty == false ? last : nil
            }, "the controller never recorded the mismatch")
            let mismatch = try #require((verdict["mismatches"] as? [[String: Any]])?.first)
            #expect((mismatch["pcr"] as? NSNumber)?.intValue == 8, "\(mismatch)")
            #expect((mismatch["expected"] as? String)?.lowercased() == predicted, "\(mismatch)")
            #expect((mismatch["actual"] as? String)?.lowercased() != predicted, "\(mismatch)")
            // The failed boot gets its config without the secret, and its vault stays locked: the
            // changed PCR 8 is not what the release key approved for IMGA.
            let withheld = live.wait(for: "served with its secrets withheld", after: ready.index, timeout: 120)
            #expect(withheld?.text.contains("failed: PCR 8") == true, "\(withheld?.text ?? "no withheld line") \(live.console.suffix(3000))")
            #expect(live.wait(for: "outpost: vault: locked: ", timeout: 5) != nil, "\(live.console.suffix(3000))")
            #expect(!live.lines.contains { $0.text.contains("fleet: secrets: ") && $0.text.contains("stored in the vault") },
                    "a boot that failed attestation stored no secret")
            #expect(!live.console.contains(Self.secret), "the secret's value never reaches the failed boot's console")
            #expect(!live.lines.contains { $0.text.contains("outpost: outpost: ") }, "one prefix per console line")
            print("attestation: boot 2 with a changed command line: \(failed?.text ?? "-")")
        }
    }
}
