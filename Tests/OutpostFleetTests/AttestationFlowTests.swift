import Crypto
import Foundation
import OutpostBundle
import OutpostController
import OutpostProto
import OutpostTestSupport
import Synchronization
import Testing
@testable import OutpostFleet
@testable import OutpostTrust

/// Remote attestation end to end: the reference controller (child process, mutual TLS), a
/// swtpm behind TPMAttestor, a bundle whose signed manifest predicts the swtpm's PCR 8/9.
@Suite("Fleet: remote attestation against the reference controller (swtpm)", .serialized)
struct AttestationFlowTests {
    static func extend(_ tpm: SoftwareTPM, pcr: Int, with text: String) throws {
        let digest = hex(Array(SHA256.hash(data: Array(text.utf8))))
        let run = try runCommand(["tpm2_pcrextend", "-T", tpm.tcti, "\(pcr):sha256=\(digest)"], timeout: .seconds(20))
        guard run.status == 0 else { throw TestSupportError.failed(command: "tpm2_pcrextend", status: run.status, output: run.output) }
    }

    /// A booted machine's TPM: firmware PCRs and GRUB's 8 and 9 hold measurements.
    static func bootedTPM(_ dir: String) throws -> SoftwareTPM {
        let tpm = try SoftwareTPM(stateDirectory: dir + "/tpm")
        for pcr in [0, 4, 7] { try extend(tpm, pcr: pcr, with: "firmware \(pcr)") }
        try extend(tpm, pcr: 8, with: "grub_cmd linux /vmlinuz console=ttyS0")
        try extend(tpm, pcr: 9, with: "/boot/vmlinuz")
        return tpm
    }

    /// Signs a bundle for `version` whose manifest predicts `pcr8`/`pcr9` for IMGA, makes its
    /// key a trust anchor of the controller and adds it through the admin API.
    static func addBundle(_ controller: ChildController, version: String, pcr8: [UInt8], pcr9: [UInt8], dir: String) async throws {
        let key = SigningKey.generate()
        try key.key.publicKey.pemRepresentation.write(toFile: controller.dir.trustDir + "/attest-test.pem", atomically: true, encoding: .utf8)
        var random = SplitMix64.forTest()
        let payload = random.bytes(4096)
        let m = BundleManifest(osVersion: version, securityVersion: 1, board: "generic-efi", arch: "x86_64",
                               payloadSize: UInt64(payload.count), payloadSHA256: hex(Array(SHA256.hash(data: payload))),
                               verity: .init(rootHash: String(repeating: "ab", count: 32), salt: "0011", rootOffset: 0,
                                             rootDataBlocks: 1, hashOffset: UInt64(payload.count)),
                               pcrs: ["IMGA": .init(pcr8: hex(pcr8), pcr9: hex(pcr9))])
        let path = dir + "/\(version).bundle"
        try Data(try BundleWriter.prologue(manifest: m, keys: [key]) + payload).write(to: URL(fileURLWithPath: path))
        _ = try await controller.admin("POST", "/bundles", ["path": path])
    }

    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        func add(_ line: String) { lines.withLock { $0.append(line) } }
        var all: [String] { lines.withLock { $0 } }
    }

    static func client(_ controller: ChildController, _ name: String, _ device: RecordingDevice, _ console: Lines,
                       attestor: (any DeviceAttestor)?) throws -> FleetClient {
        try FleetClient(configuration: try controller.deviceConfiguration(name),
                        dependencies: FleetDependencies(updater: device, network: device, power: device, state: device,
                                                        console: { console.add($0) }),
                        attestor: attestor, identityStatus: attestor == nil ? "no TPM: test" : "device key in the TPM (swtpm)")
    }

    /// The config hash the controller holds for the whole config (the admin view).
    static func wholeConfigHash(_ controller: ChildController, _ id: String) async throws -> String {
        let show = try await controller.admin("GET", "/devices/\(id)") as? [String: Any] ?? [:]
        return show["configHash"] as? String ?? ""
    }

    /// The config response's bytes as the controller serves them to `client` now, with its token.
    static func servedConfig(_ client: FleetClient) async throws -> Data {
        var request = Outpost_Api_V1_ConfigRequest()
        request.attestationToken = Data(client.loop.withLock { $0.attestationToken })
        let body = try Array(request.serializedBytes() as Data)
        let answer = try await offPool { try client.link.call(APIPath.config, body: body, tls: client.deviceTLS) }
        guard answer.status == 200 else { throw TestSupportError.failed(command: "config", status: Int32(answer.status), output: "") }
        return Data(answer.body)
    }

    static func attestation(_ controller: ChildController, _ id: String) async throws -> [String: Any] {
        try await controller.admin("GET", "/devices/\(id)/attestation") as? [String: Any] ?? [:]
    }

    /// On the data directory's SQLite and on a private PostgreSQL (`serve --database`).
    @Test(arguments: ["sqlite", "postgres"])
    func aDeviceAttestsGetsItsSecretsAndAChangedPCR8FailsNamingExpectedAndActual(_ store: String) async throws {
        let tmp = try TemporaryDirectory("fleet-attest")
        let controller = try await ChildController(tag: "attest", store: store)
        let tpm = try Self.bootedTPM(tmp.path)
        let attestor = TPMDeviceAttestor(attestor: try TPMAttestor(tcti: tpm.tcti), eventLogPath: tmp.path + "/binary_bios_measurements")
        try Data(repeating: 0x5a, count: 3000).write(to: URL(fileURLWithPath: tmp.path + "/binary_bios_measurements"))
        let booted = try attestor.quote(nonce: [1, 2, 3], pcrs: [0, 4, 7, 8, 9]).pcrs
        let (pcr8, pcr9) = (try #require(booted[8]), try #require(booted[9]))
        try await Self.addBundle(controller, version: "1.0", pcr8: pcr8, pcr9: pcr9, dir: tmp.path)

        let device = RecordingDevice()
        device.bootedSlot.withLock { $0 = "IMGA" }
        let console = Lines()
        let first = try Self.client(controller, "a", device, console, attestor: attestor)
        try await offPool { try first.register(); try first.attest(); _ = try first.pollConfig() }
        let id = try #require(first.status.deviceID)
        #expect(console.all.contains("attestation: passed"), "\(console.all)")
        #expect(first.status.attestation == "passed")
        // With this boot's token the device holds the whole config (the same hash as the controller's).
        let whole = try await Self.wholeConfigHash(controller, id)
        #expect(first.loop.withLock { $0.configHash } == whole)
        // A secret: served, value and all, to the request with this boot's token.
        let secret = Data("attested-\(UInt64.random(in: 1...UInt64.max))".utf8)
        _ = try await controller.admin("POST", "/devices/\(id)/set-secret", ["name": "wifi.psk", "valueBase64": secret.base64EncodedString()])
        let served = try await Self.servedConfig(first)
        let passedConfig = try Outpost_Api_V1_ConfigResponse(serializedBytes: served)
        #expect(!passedConfig.attestation.secretsWithheld && passedConfig.config.secrets.map(\.name) == ["wifi.psk"]
                && passedConfig.config.secrets.first?.value == secret)
        var shown = try await Self.attestation(controller, id)
        #expect(shown["identity"] as? String == "tpm" && shown["attested"] as? Bool == true, "\(shown)")
        #expect((shown["key"] as? [String: Any])?["bound"] as? Bool == true)
        #expect(((shown["key"] as? [String: Any])?["firstUsePCRs"] as? [String: String])?.keys.sorted() == ["0", "4", "7"])
        let firstLast = try #require(shown["last"] as? [String: Any])
        #expect(!(firstLast["eventLogGzip"] as? String ?? "").isEmpty)

        // The saved quote verifies with tpm2_checkquote, through the CLI's --save.
        let saved = tmp.path + "/saved"
        let cli = try runCommand([ChildController.executable, "device", "attestation", id, "--data", controller.dir.path, "--save", saved])
        #expect(cli.status == 0 && cli.stdout.contains("passed"), "\(cli.output)")
        let check = try runCommand(["sh", saved + "/checkquote.sh"], timeout: .seconds(20))
        #expect(check.status == 0, "\(check.output)")
        // The independent check can fail: another nonce.
        let other = try runCommand(["tpm2_checkquote", "-u", saved + "/ak.pub", "-m", saved + "/quote.msg", "-s", saved + "/quote.sig",
                                    "-f", saved + "/quote.pcrs", "-l", "sha256:0,4,7,8,9", "-g", "sha256", "-q", String(repeating: "00", count: 32)],
                                   timeout: .seconds(20))
        #expect(other.status != 0, "tpm2_checkquote accepted another nonce")

        // An operator's firmware PCRs for the hardware model replace first use: another PCR 0 fails, the real ones pass.
        let other0 = String(repeating: "11", count: 32)
        let pcr0 = hex(try #require(booted[0])), pcr4 = hex(try #require(booted[4])), pcr7 = hex(try #require(booted[7]))
        let ctl = [ChildController.executable]
        let set = try runCommand(ctl + ["firmware", "set", "test-board", "--pcr", "0=\(other0)", "--pcr", "4=\(pcr4)", "--data", controller.dir.path])
        #expect(set.status == 0, "\(set.output)")
        let byModel = try Self.client(controller, "a", device, console, attestor: attestor)
        try await offPool { try byModel.attest() }
        #expect(console.all.last == "attestation: failed: PCR 0: expected \(other0), actual \(pcr0)", "\(console.all)")
        _ = try sh(ctl + ["firmware", "set", "test-board", "--pcr", "0=\(pcr0)", "--pcr", "4=\(pcr4)", "--pcr", "7=\(pcr7)",
                          "--data", controller.dir.path])
        let list = try sh(ctl + ["firmware", "list", "--data", controller.dir.path])
        #expect(list.contains("test-board: PCR 0=\(pcr0) 4=\(pcr4) 7=\(pcr7)"), "\(list)")
        let matched = try Self.client(controller, "a", device, console, attestor: attestor)
        try await offPool { try matched.attest() }
        #expect(console.all.last == "attestation: passed")
        let byModelShown = try #require(try await Self.attestation(controller, id)["last"] as? [String: Any])
        #expect(byModelShown["firmwareReference"] as? String == "model test-board", "\(byModelShown)")
        let refused = try runCommand(ctl + ["firmware", "set", "test-board", "--pcr", "8=\(pcr0)", "--data", controller.dir.path])
        #expect(refused.status == 1 && refused.stderr.contains("not a firmware PCR"), "\(refused.output)")
        _ = try sh(ctl + ["firmware", "remove", "test-board", "--data", controller.dir.path])

        // The kernel command line changed after signing: PCR 8 differs. A reboot (a new client) attests anew.
        try Self.extend(tpm, pcr: 8, with: "grub_cmd linux /vmlinuz console=ttyS0 init=/bin/sh")
        let changed = try #require(try attestor.quote(nonce: [4], pcrs: [8]).pcrs[8])
        let second = try Self.client(controller, "a", device, console, attestor: attestor)
        try await offPool { try second.attest(); _ = try second.pollConfig() }
        let line = "attestation: failed: PCR 8: expected \(hex(pcr8)), actual \(hex(changed))"
        #expect(console.all.last == line, "\(console.all)")
        #expect(second.status.attestation == String(line.dropFirst("attestation: ".count)))
        // Secrets withheld: the config the device got is marked and hashed differently, and its bytes hold no secret.
        let withheldBytes = try await Self.servedConfig(second)
        #expect(withheldBytes.range(of: secret) == nil, "a failed attestation was served the secret's value")
        let withheldConfig = try Outpost_Api_V1_ConfigResponse(serializedBytes: withheldBytes)
        #expect(withheldConfig.attestation.secretsWithheld && withheldConfig.config.secrets.isEmpty)
        let heldHash = second.loop.withLock { $0.configHash }
        let wholeNow = try await Self.wholeConfigHash(controller, id)
        #expect(!heldHash.isEmpty && heldHash != wholeNow)
        shown = try await Self.attestation(controller, id)
        let last = try #require(shown["last"] as? [String: Any])
        #expect(shown["attested"] as? Bool == false)
        let mismatches = last["mismatches"] as? [[String: Any]] ?? []
        #expect(mismatches.count == 1 && mismatches.first?["pcr"] as? Int == 8 && mismatches.first?["expected"] as? String == hex(pcr8)
                && mismatches.first?["actual"] as? String == hex(changed), "\(mismatches)")
        let json = try runCommand([ChildController.executable, "device", "attestation", id, "--data", controller.dir.path, "--json"])
        let parsed = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(json.status == 0 && (parsed?["last"] as? [String: Any])?["passed"] as? Bool == false, "\(json.output)")

        // A replayed quote: its nonce was used, so it is refused and nothing is stored.
        let files = try #require(last["files"] as? [String: Any])
        var replay = Outpost_Api_V1_AttestationQuote()
        replay.attest = Data(try #require(bytes(fromHex: files["message"] as? String ?? "")))
        let sig = try #require(bytes(fromHex: files["signature"] as? String ?? ""))
        replay.signatureR = Data(sig[6..<38])
        replay.signatureS = Data(sig[40..<72])
        for (k, v) in last["pcrs"] as? [String: String] ?? [:] { replay.pcrs[UInt32(k) ?? 99] = Data(bytes(fromHex: v) ?? []) }
        replay.slot = "IMGA"
        replay.osVersion = "1.0"
        let replayBody = try Array(replay.serializedBytes() as Data)
        let replayed = try await offPool { try second.link.call(APIPath.attestQuote, body: replayBody, tls: second.deviceTLS) }
        #expect(replayed.status == 409, "\(replayed.status) \(String(decoding: replayed.body, as: UTF8.self))")
        let afterReplay = try await Self.attestation(controller, id)["last"] as? [String: Any]
        #expect(afterReplay?["received"] as? String == last["received"] as? String)

        // A quote over another nonce than the one issued is refused by the verifier.
        _ = try await offPool { try second.link.call(APIPath.attestNonce, tls: second.deviceTLS) }
        let wrong = try attestor.quote(nonce: Array(repeating: 7, count: 32), pcrs: [0, 4, 7, 8, 9])
        var q = Outpost_Api_V1_AttestationQuote()
        q.attest = Data(wrong.attest)
        q.signatureR = Data(wrong.signatureR)
        q.signatureS = Data(wrong.signatureS)
        for (k, v) in wrong.pcrs { q.pcrs[UInt32(k)] = Data(v) }
        q.slot = "IMGA"
        q.osVersion = "1.0"
        let wrongBody = try Array(q.serializedBytes() as Data)
        let answer = try await offPool { try second.link.call(APIPath.attestQuote, body: wrongBody, tls: second.deviceTLS) }
        let result = try Outpost_Api_V1_AttestationResult(serializedBytes: answer.body)
        #expect(answer.status == 200 && !result.passed && result.reason.contains("not the nonce") && result.token.isEmpty, "\(result)")

        // A malformed quote body: one line back, nothing stored.
        let before = try await Self.attestation(controller, id)["last"] as? [String: Any]
        _ = try await offPool { try second.link.call(APIPath.attestNonce, tls: second.deviceTLS) }
        let garbage = try await offPool { try second.link.call(APIPath.attestQuote, body: [0x0a, 0xff, 0xff, 0x01], tls: second.deviceTLS) }
        let text = String(decoding: garbage.body, as: UTF8.self)
        #expect(garbage.status == 400 && text.hasPrefix("malformed") && text.split(separator: "\n").count == 1, "\(garbage.status) \(text)")
        let after = try await Self.attestation(controller, id)["last"] as? [String: Any]
        #expect(after?["received"] as? String == before?["received"] as? String)
        await controller.stop()
        if let postgres = controller.postgres {
            // The keys and the last quote are PostgreSQL's rows, not the data directory's.
            #expect(try postgres.sql("attest", "SELECT count(*) FROM attestation_keys") == "1")
            #expect(try postgres.sql("attest", "SELECT count(*) FROM attestations WHERE device_id = '\(id)'") == "1")
        }
    }

    /// No TPM: the device registers with its file identity, is reported as such, is never
    /// attested, and gets its whole config.
    @Test func aDeviceWithTheFileIdentityIsNotAttestedAndGetsItsWholeConfig() async throws {
        let controller = try await ChildController(tag: "attest-file")
        let device = RecordingDevice()
        let console = Lines()
        let client = try Self.client(controller, "f", device, console, attestor: nil)
        try await offPool { try client.register(); _ = try client.pollConfig() }
        let id = try #require(client.status.deviceID)
        #expect(client.status.attestation == nil)
        let whole = try await Self.wholeConfigHash(controller, id)
        #expect(client.loop.withLock { $0.configHash } == whole)
        let shown = try await Self.attestation(controller, id)
        #expect(shown["identity"] as? String == "file" && shown["attested"] as? Bool == false, "\(shown)")
        // A nonce is refused: there is no key to quote with.
        let nonce = try await offPool { try client.link.call(APIPath.attestNonce, tls: client.deviceTLS) }
        #expect(nonce.status == 409)
        await controller.stop()
    }
}
