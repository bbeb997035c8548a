import Crypto
import Foundation
import OutpostBundle
import OutpostController
import OutpostProto
import OutpostTestSupport
import Synchronization
import Testing
@testable import OutpostAgent
@testable import OutpostFleet

/// DeviceConfig.secrets from the reference controller (child process, file identity) into the
/// agent's vault through its real adapter (FleetVault → VaultSecrets), the vault's area being a
/// directory on the host (dm-crypt is VaultVolumeTests' and the QEMU test's).
@Suite("Fleet: the controller's secrets into the vault", .serialized)
struct SecretsFlowTests {
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        func add(_ line: String) { lines.withLock { $0.append(line) } }
        var all: [String] { lines.withLock { $0 } }
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count else { return false }
        return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
    }

    @Test func secretsLandInTheVaultAreDeletedWhenDroppedWaitForAnOpenVaultAndNeverReachTheSavedConfig() async throws {
        let controller = try await ChildController(tag: "secrets")
        let tmp = try TemporaryDirectory("secrets-vault")
        var paths = VaultPaths()
        paths.directory = tmp.path + "/vault"
        try FileManager.default.createDirectory(atPath: paths.mountPoint, withIntermediateDirectories: true)
        let open = VaultService(paths: paths, slot: "IMGA", version: "1.0")
        open.assumeOpened(detail: "a directory on the host")
        let locked = VaultService(paths: paths, slot: "IMGA", version: "1.0")   // never opened
        try open.put("own", Array("the console's".utf8))
        let current = Mutex(open)
        let lines = Lines()
        let device = RecordingDevice()
        let configuration = try controller.deviceConfiguration("s")
        let dependencies = FleetDependencies(updater: device, network: device, power: device, state: device,
                                             log: { lines.add($0) }, secrets: FleetVault(vault: { current.withLock { $0 } }))
        let client = try FleetClient(configuration: configuration, dependencies: dependencies)
        try await offPool { try client.register(); _ = try client.pollConfig() }
        let id = try #require(client.loop.withLock { $0.deviceID })

        let value = Array("psk-\(UInt64.random(in: 1...UInt64.max))".utf8)
        let file = tmp.path + "/token"
        try Data("token-value".utf8).write(to: URL(fileURLWithPath: file))
        let ctl = [ChildController.executable]
        let set = try sh(ctl + ["device", "set-secret", id, "wifi.psk", "--value", String(decoding: value, as: UTF8.self), "--data", controller.dir.path])
        #expect(set.contains("secret wifi.psk set (\(value.count) bytes, sha256 \(hex(Array(SHA256.hash(data: value)))))"), "\(set)")
        _ = try sh(ctl + ["device", "set-secret", id, "api-token", "--file", file, "--data", controller.dir.path])
        let piped = try runCommand(["sh", "-c", "printf %s 'piped value' | \"$0\" device set-secret \"$1\" piped --stdin --data \"$2\"",
                                    ChildController.executable, id, controller.dir.path], timeout: .seconds(60))
        #expect(piped.status == 0 && piped.stdout.contains("secret piped set (11 bytes"), "\(piped.output)")
        let show = try sh(ctl + ["device", "show", id, "--data", controller.dir.path])
        #expect(show.contains("secret       wifi.psk \(value.count) bytes sha256 ") && !show.contains(String(decoding: value, as: UTF8.self)))

        #expect(try await offPool { try client.pollConfig() } == 200)
        let secrets = paths.mountPoint + "/secrets/"
        #expect(FileManager.default.contents(atPath: secrets + "controller.wifi.psk") == Data(value))
        #expect(FileManager.default.contents(atPath: secrets + "controller.api-token") == Data("token-value".utf8))
        #expect(try open.fingerprint("controller.wifi.psk").sha256 == hex(Array(SHA256.hash(data: value))))
        #expect(FileManager.default.contents(atPath: secrets + "controller.piped") == Data("piped value".utf8))
        #expect(lines.all.contains("secrets: 3 stored in the vault (api-token, piped, wifi.psk)"), "\(lines.all)")
        #expect(!lines.all.contains { $0.contains(String(decoding: value, as: UTF8.self)) }, "a value on the console")

        // The last good config on PERSIST: names only, the controller's hash as sent.
        let saved = try #require(FileManager.default.contents(atPath: configuration.stateDirectory + "/config.pb"))
        #expect(!Self.contains(Array(saved), value) && !Self.contains(Array(saved), Array("token-value".utf8)))
        let stored = try Outpost_Api_V1_ConfigResponse(serializedBytes: saved)
        #expect(stored.config.secrets.map(\.name) == ["api-token", "piped", "wifi.psk"] && stored.config.secrets.allSatisfy { $0.value.isEmpty })
        #expect(stored.configHash == client.loop.withLock { $0.configHash })

        // Dropped by the controller: deleted from the vault; the console's own secret stays.
        _ = try sh(ctl + ["device", "remove-secret", id, "api-token", "--data", controller.dir.path])
        #expect(try await offPool { try client.pollConfig() } == 200)
        #expect(!FileManager.default.fileExists(atPath: secrets + "controller.api-token"))
        #expect(try open.secretNames() == ["controller.piped", "controller.wifi.psk", "own"])
        #expect(lines.all.contains("secrets: 1 removed from the vault (api-token)"), "\(lines.all)")

        // The vault is not open: one warning, nothing written or deleted.
        current.withLock { $0 = locked }
        _ = try sh(ctl + ["device", "set-secret", id, "late", "--value", "late-value", "--data", controller.dir.path])
        #expect(try await offPool { try client.pollConfig() } == 200)
        #expect(try Set(FileManager.default.contentsOfDirectory(atPath: secrets)) == ["controller.piped", "controller.wifi.psk", "own"])
        let warning = lines.all.last ?? ""
        #expect(warning.hasPrefix("warning: secrets: 3 not stored (late, piped, wifi.psk): the vault is not open (vault: unavailable: not opened)"),
                "\(lines.all)")
        let savedLocked = try #require(FileManager.default.contents(atPath: configuration.stateDirectory + "/config.pb"))
        #expect(!Self.contains(Array(savedLocked), Array("late-value".utf8)))

        // The next boot with the vault open: the saved config names `late`, the vault lacks it, so the
        // client asks for the config again and stores it.
        current.withLock { $0 = open }
        let rebooted = try FleetClient(configuration: configuration, dependencies: dependencies)
        try rebooted.start()
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: secrets + "controller.late") {
            try await Task.sleep(for: .milliseconds(100))
        }
        rebooted.stop()
        #expect(FileManager.default.contents(atPath: secrets + "controller.late") == Data("late-value".utf8))
        #expect(lines.all.contains("secrets: the vault lacks late: asking the controller for the config again"), "\(lines.all)")
        await controller.stop()
    }

    @Test func theDeviceRefusesSecretsOutsideTheContractInOneLine() {
        func secret(_ name: String, _ bytes: Int = 1) -> ConfigSecret { ConfigSecret.with { $0.name = name; $0.value = Data(count: bytes) } }
        #expect(ConfigSecrets.problem([secret("a"), secret("b.c_d-9")]) == nil)
        #expect(ConfigSecrets.problem([secret("../x")])?.contains("is not a secret name") == true)
        #expect(ConfigSecrets.problem([secret(String(repeating: "n", count: 54))])?.contains("is not a secret name") == true)
        #expect(ConfigSecrets.problem([secret(String(repeating: "n", count: 53))]) == nil, "controller. + 53 = the vault's 64")
        #expect(ConfigSecrets.problem([secret("big", 4097)]) == "secret big: 4097 bytes, more than 4096")
        #expect(ConfigSecrets.problem([secret("a"), secret("a")]) == "secret a appears twice")
        #expect(ConfigSecrets.problem([secret("b"), secret("a")]) == "secrets not sorted by name (a after b)")
        #expect(ConfigSecrets.problem((0..<65).map { secret(String(format: "s%03d", $0)) }) == "65 secrets, more than 64")
    }

    @Test func theWithheldLineSaysTheControllersLastAttestation() {
        var a = Outpost_Api_V1_ConfigAttestation()
        a.secretsWithheld = true
        #expect(FleetClient.withheldReason(a) == "this boot is not attested (the controller has no attestation of it)")
        a.last.reason = "failed: PCR 8: expected aa, actual bb"
        #expect(FleetClient.withheldReason(a) == "this boot is not attested (the controller's last attestation: failed: PCR 8: expected aa, actual bb)")
    }
}
