import Foundation
import Testing

/// Decodes `outpost vault show --json`.
struct VaultShowJSON: Decodable {
    struct Slot: Decodable {
        var slot: String; var pcr8: String; var pcr9: String; var approvedPolicy: String
        var signatureVerifies: Bool; var error: String?
    }
    var osVersion: String
    var securityVersion: UInt64
    var keyID: String
    var keyTrusted: Bool?
    var slots: [Slot]
    var ok: Bool
}

/// A factory image built with `--vault-key` carries the release key's approved
/// vault policies for both slots on CONFIG (`vault.json`), for the PCRs the
/// builder predicted, and stays bit-identical across builds; the bundle of the
/// same slot carries the same approvals in its signed manifest.
@Suite("Vault approvals on CONFIG and in bundles", .serialized)
struct VaultImageTests {
    /// The fixture plus what predictions need: the shipped stage-1 config, a slot manifest
    /// describing slot.img, and a release key pair in `keys/`.
    func fixture(_ tag: String) throws -> String {
        let d = try Support.fixture(tag)
        let root = Support.packageRoot
        try FileManager.default.removeItem(atPath: d + "/efi/EFI/BOOT/grub.cfg")
        try FileManager.default.copyItem(atPath: root + "/grub/stage1.cfg", toPath: d + "/efi/EFI/BOOT/grub.cfg")
        let cmdline = "console=ttyS0 outpost.slot=${outpost_slot_uuid}"
        let stage2 = try String(contentsOfFile: root + "/grub/stage2.cfg.in", encoding: .utf8)
            .replacingOccurrences(of: "@CMDLINE@", with: cmdline).replacingOccurrences(of: "@VERSION@", with: "1.4.0")
        let size = try #require(try FileManager.default.attributesOfItem(atPath: d + "/slot.img")[.size] as? UInt64)
        let manifest: [String: Any] = [
            "version": "1.4.0", "size": size, "sha256": try Support.sha256(d + "/slot.img"), "rootOffset": 0, "rootDataBlocks": 1,
            "hashOffset": 4096, "rootHash": String(repeating: "0", count: 64), "salt": "00",
            "kernelSHA256": String(repeating: "ab", count: 32), "initrdSHA256": String(repeating: "cd", count: 32),
            "cmdline": cmdline, "grubCfg": stage2,
        ]
        try JSONSerialization.data(withJSONObject: manifest).write(to: URL(fileURLWithPath: d + "/slot.json"))
        let keys = try Support.run([Support.outpost, "keys", "generate", "--out", d + "/keys", "--name", "release"])
        #expect(keys.status == 0, "\(keys.stderr)")
        return d
    }

    func build(_ d: String, output: String, security: String = "5") throws -> Support.Result {
        try Support.build(d, output: output, extra: [
            "--slot-manifest", d + "/slot.json", "--measurements", output + ".measurements.json",
            "--vault-key", d + "/keys/release.key.pem", "--security-version", security,
        ])
    }

    /// CONFIG's vault.json, copied out with mtools.
    func vaultJSON(_ image: String, to out: String) throws {
        let (json, _) = try inspect(image)
        let config = try #require(json.partitions.first { $0.name == "CONFIG" })
        let r = try Support.run(["mcopy", "-n", "-i", "\(image)@@\(config.firstLBA * 512)", "::/vault.json", out],
                                env: ["MTOOLS_SKIP_CHECK": "1"])
        #expect(r.status == 0, "\(r.stderr)")
    }

    func show(_ file: String, trust: String) throws -> (VaultShowJSON?, Support.Result) {
        let r = try Support.run([Support.outpost, "vault", "show", "--json", "--trust", trust, file])
        return (try? JSONDecoder().decode(VaultShowJSON.self, from: Data(r.stdout.utf8)), r)
    }

    @Test func configCarriesApprovalsForThePredictedPCRsThatVerifyAgainstTheTrustStore() throws {
        let d = try fixture("vault-image")
        defer { try? FileManager.default.removeItem(atPath: d) }
        let img = d + "/disk.img"
        let b = try build(d, output: img)
        #expect(b.status == 0, "\(b.stderr)")
        try vaultJSON(img, to: d + "/vault.json")

        let (report, r) = try show(d + "/vault.json", trust: d + "/keys")
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let v = try #require(report)
        #expect(v.ok && v.keyTrusted == true && v.osVersion == "1.4.0" && v.securityVersion == 5)
        #expect(v.slots.map(\.slot) == ["IMGA", "IMGB"] && v.slots.allSatisfy(\.signatureVerifies))
        // The approvals are for exactly the PCRs the builder predicted for each slot.
        let measurements = try #require(try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: img + ".measurements.json"))) as? [String: Any])
        let slots = try #require(measurements["slots"] as? [String: [String: String]])
        for s in v.slots {
            #expect(s.pcr8 == slots[s.slot]?["pcr8"]?.lowercased() && s.pcr9 == slots[s.slot]?["pcr9"]?.lowercased())
        }
        #expect(v.slots[0].approvedPolicy != v.slots[1].approvedPolicy)

        // Another trust store refuses it, with the reason; a tampered file is refused in one line.
        try Support.run([Support.outpost, "keys", "generate", "--out", d + "/other", "--name", "other"])
        let (foreign, fr) = try show(d + "/vault.json", trust: d + "/other")
        #expect(fr.status == 1 && foreign?.ok == false && foreign?.keyTrusted == false, "\(fr.stdout)")
        var text = try String(contentsOfFile: d + "/vault.json", encoding: .utf8)
        let policy = v.slots[1].approvedPolicy
        text = text.replacingOccurrences(of: policy, with: String(policy.dropLast()) + (policy.hasSuffix("0") ? "1" : "0"))
        try text.write(toFile: d + "/bad.json", atomically: true, encoding: .utf8)
        let bad = try Support.run([Support.outpost, "vault", "show", "--trust", d + "/keys", d + "/bad.json"])
        #expect(bad.status == 1 && bad.stderr.contains("field 'slots.IMGB.approvedPolicy'")
                && bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")

        // A CONFIG directory that already has vault.json is refused rather than overwritten.
        try FileManager.default.copyItem(atPath: d + "/vault.json", toPath: d + "/config/vault.json")
        let clash = try build(d, output: d + "/clash.img")
        #expect(clash.status == 1 && clash.stderr.contains("vault.json") && !FileManager.default.fileExists(atPath: d + "/clash.img"))
    }

    @Test func theImageIsBitIdenticalAcrossBuildsAndTheSecurityVersionMovesIt() throws {
        let d = try fixture("vault-repro")
        defer { try? FileManager.default.removeItem(atPath: d) }
        #expect(try build(d, output: d + "/a.img").status == 0)
        #expect(try build(d, output: d + "/b.img").status == 0)
        #expect(try build(d, output: d + "/c.img", security: "6").status == 0)
        #expect(try Support.sha256(d + "/a.img") == (try Support.sha256(d + "/b.img")))
        #expect(try Support.sha256(d + "/a.img") != (try Support.sha256(d + "/c.img")))
        // Without --vault-key, CONFIG has no vault.json, as before.
        #expect(try Support.build(d, output: d + "/plain.img").status == 0)
        let (json, _) = try inspect(d + "/plain.img")
        let config = try #require(json.partitions.first { $0.name == "CONFIG" })
        let dir = try Support.run(["mdir", "-b", "-i", "\(d)/plain.img@@\(config.firstLBA * 512)", "::/"], env: ["MTOOLS_SKIP_CHECK": "1"])
        #expect(dir.status == 0 && !dir.stdout.contains("vault.json"), "\(dir.stdout)")
    }

    @Test func theBundleOfTheSameSlotCarriesTheSameApprovalsAndVerifyShowsThem() throws {
        let d = try fixture("vault-bundle")
        defer { try? FileManager.default.removeItem(atPath: d) }
        let img = d + "/disk.img"
        #expect(try build(d, output: img).status == 0)
        try vaultJSON(img, to: d + "/vault.json")
        let created = try Support.run([Support.outpost, "bundle", "create", "--quiet", "--key", d + "/keys/release.key.pem",
                                       "--slot", d + "/slot.img", "--manifest", d + "/slot.json",
                                       "--measurements", img + ".measurements.json", "--security-version", "5",
                                       "--output", d + "/u.bundle"])
        #expect(created.status == 0, "\(created.stderr)")
        let verify = try Support.run([Support.outpost, "bundle", "verify", "--quiet", "--trust", d + "/keys", d + "/u.bundle"])
        #expect(verify.status == 0, "\(verify.stderr)")
        let lines = verify.stdout.split(separator: "\n").filter { $0.hasPrefix("vault IMG") }
        #expect(lines.count == 2 && lines.allSatisfy { $0.hasSuffix("signature verifies") }, "\(verify.stdout)")
        let json = try Support.run([Support.outpost, "bundle", "verify", "--json", "--quiet", "--trust", d + "/keys", d + "/u.bundle"])
        #expect(json.stdout.contains("\"vault\"") && json.stdout.contains("\"approvedPolicy\""), "\(json.stdout)")

        let (fromBundle, br) = try show(d + "/u.bundle", trust: d + "/keys")
        let (fromConfig, _) = try show(d + "/vault.json", trust: d + "/keys")
        #expect(br.status == 0, "\(br.stdout) \(br.stderr)")
        let a = try #require(fromBundle), b = try #require(fromConfig)
        #expect(a.ok && a.slots.map(\.approvedPolicy) == b.slots.map(\.approvedPolicy))
    }
}
