import Crypto
import Foundation
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// DeviceInfo.vault at the controller (SQLite and PostgreSQL alike): `device show` says the
/// device's vault state, floor and, for each secret the operator set, whether the device holds
/// that value (by the SHA-256 it reports); an info whose vault breaks the bounds is refused in
/// one line and stores nothing.
@Suite("Controller: the device's vault in its info", .postgresServer)
struct VaultInfoTests {
    static func sha256(_ d: Data) -> String { SHA256.hash(data: d).map { String(format: "%02x", $0) }.joined() }

    static func held(_ name: String, _ value: Data, sha256: String? = nil) -> VaultSecretInfo {
        VaultSecretInfo.with {
            $0.name = name
            $0.sha256 = sha256 ?? Self.sha256(value)
            $0.bytes = UInt32(value.count)
        }
    }

    static func info(_ vault: VaultInfo) -> DeviceInfo {
        var i = InfoMetricsTests.info(step: .idle, version: "1.0.0")
        i.identity.serial = "SN-VAULT"
        i.vault = vault
        return i
    }

    static func show(_ c: RunningController, _ id: String) async throws -> [String: Any] {
        try await c.call("GET", "/devices/\(id)") as? [String: Any] ?? [:]
    }

    static func cli(_ c: RunningController, _ args: [String]) throws -> String {
        let r = try runCommand([PostgresControllerTests.executable, "device"] + args + ["--data", c.dir.path], timeout: .seconds(60))
        guard r.status == 0 else { throw ControllerError.invalidInput("device \(args.joined(separator: " ")): \(r.output)") }
        return r.stdout
    }

    @Test(arguments: Backend.allCases)
    func deviceShowSaysTheVaultAndWhichSecretsArrivedByTheirSHA256(_ backend: Backend) async throws {
        let fixture = try StoreFixture(backend, tag: "vaultinfo")
        let c = try await RunningController(tag: "vaultinfo-\(backend.rawValue)", store: backend == .postgres ? fixture.location : nil)
        let (dc, id) = try await c.newDevice(serial: "SN-VAULT")
        let psk = Data("psk-\(UInt64.random(in: 1...UInt64.max))-never-shown".utf8)
        let token = Data("token-\(UInt64.random(in: 1...UInt64.max))".utf8)
        for (name, value) in [("wifi.psk", psk), ("api-token", token), ("late", Data("late".utf8))] {
            _ = try await ConfigSecretsTests.set(c, id, name, value)
        }

        // No vault in the info (an older device): no vault object, and no delivery claimed.
        #expect(try await dc.post(DeviceAPI.info, try InfoMetricsTests.info(step: .idle, version: "1.0.0").serializedBytes()).status == 200)
        #expect(try await Self.show(c, id)["vault"] == nil)
        let old = try Self.cli(c, ["show", id])
        #expect(old.contains("vault        not reported (the device's info has no vault)\n"), "\(old)")
        #expect(old.contains("secret       wifi.psk \(psk.count) bytes sha256 \(Self.sha256(psk))\n"), "no delivery word without a vault: \(old)")

        // Open, floor 3: wifi.psk with the operator's value, api-token with another, late not there,
        // and a controller secret the config no longer has.
        let opened = "opened for IMGA version 1.0.0 (security version 3, floor 3, release key 5f2a) at /persist/vault/data"
        var vault = VaultInfo()
        vault.state = .unlocked
        vault.detail = opened
        vault.securityFloor = 3
        vault.secrets = [Self.held("api-token", token, sha256: Self.sha256(Data("another".utf8))), Self.held("gone", Data("x".utf8)),
                         Self.held("wifi.psk", psk)]
        #expect(try await dc.post(DeviceAPI.info, try Self.info(vault).serializedBytes()).status == 200)
        var shown = try await Self.show(c, id)
        var v = try #require(shown["vault"] as? [String: Any], "\(shown)")
        #expect(v["state"] as? String == "unlocked" && v["detail"] as? String == opened && v["floor"] as? Int == 3, "\(v)")
        var delivery = (v["secrets"] as? [[String: Any]] ?? []).map { "\($0["name"] ?? "") \($0["delivery"] ?? "")" }
        #expect(delivery == ["api-token differs", "late not yet", "wifi.psk delivered"], "\(v)")
        #expect(v["notInConfig"] as? [String] == ["gone"])
        #expect((v["held"] as? [[String: Any]])?.last?["sha256"] as? String == Self.sha256(psk))
        let shownBytes = Views.encode(shown)
        #expect(shownBytes.range(of: psk) == nil && shownBytes.range(of: token) == nil, "a value in device show")

        let text = try Self.cli(c, ["show", id])
        #expect(text.contains("vault        unlocked: \(opened)\nvault floor  3\n"), "\(text)")
        #expect(text.contains("secret       wifi.psk \(psk.count) bytes sha256 \(Self.sha256(psk)) delivered\n"), "\(text)")
        #expect(text.contains("secret       api-token \(token.count) bytes sha256 \(Self.sha256(token)) differs\n"), "\(text)")
        #expect(text.contains("secret       late 4 bytes sha256 \(Self.sha256(Data("late".utf8))) not yet\n"), "\(text)")
        #expect(text.contains("vault holds  gone (not in the config: removed with the device's next config)\n"), "\(text)")
        #expect(!text.contains(String(decoding: psk, as: UTF8.self)))

        // The same name and length with another SHA-256 is not delivered; the operator's is.
        vault.secrets = [Self.held("api-token", token), Self.held("late", Data("late".utf8), sha256: Self.sha256(Data("LATE".utf8))),
                         Self.held("wifi.psk", psk)]
        #expect(try await dc.post(DeviceAPI.info, try Self.info(vault).serializedBytes()).status == 200)
        v = try #require(try await Self.show(c, id)["vault"] as? [String: Any])
        delivery = (v["secrets"] as? [[String: Any]] ?? []).map { "\($0["name"] ?? "") \($0["delivery"] ?? "")" }
        #expect(delivery == ["api-token delivered", "late differs", "wifi.psk delivered"], "\(v)")

        // Locked after an upgrade: the reason in one line, no floor, nothing held, the list's column says it.
        let refused = "Unseal refused: the firmware changed since enrolment: PCR 0: enrolled 1111111111111111…, now 2222222222222222…"
        var locked = VaultInfo()
        locked.state = .locked
        locked.detail = refused
        #expect(try await dc.post(DeviceAPI.info, try Self.info(locked).serializedBytes()).status == 200)
        shown = try await Self.show(c, id)
        v = try #require(shown["vault"] as? [String: Any])
        #expect(v["state"] as? String == "locked" && v["floor"] == nil)
        delivery = (v["secrets"] as? [[String: Any]] ?? []).map { "\($0["name"] ?? "") \($0["delivery"] ?? "")" }
        #expect(delivery == ["api-token not yet", "late not yet", "wifi.psk not yet"])
        let lockedText = try Self.cli(c, ["show", id])
        #expect(lockedText.contains("vault        locked: \(refused)\nvault floor  unset\n"), "\(lockedText)")
        let list = try await c.call("GET", "/devices") as? [[String: Any]] ?? []
        #expect(list.first { $0["id"] as? String == id }?["vaultState"] as? String == "locked")
        let listText = try Self.cli(c, ["list"])
        #expect(listText.contains(" VAULT ") && listText.contains(" locked "), "\(listText)")

        // Out of bounds: 400 with one line, and the stored info is still the locked one.
        func bad(_ change: (inout VaultInfo) -> Void) -> VaultInfo {
            var b = locked
            change(&b)
            return b
        }
        let refusals: [(VaultInfo, String)] = [
            (bad { $0.detail = String(repeating: "x", count: 2049) }, "DeviceInfo.vault.detail is not one line of at most 2048 bytes"),
            (bad { $0.detail = "two\nlines" }, "DeviceInfo.vault.detail is not one line"),
            (bad { $0.secrets = (0..<65).map { Self.held(String(format: "s%03d", $0), Data("v".utf8)) } },
             "DeviceInfo.vault.secrets has 65 entries, more than 64"),
            (bad { $0.secrets = [Self.held(String(repeating: "n", count: 54), Data("v".utf8))] }, "is not a secret name"),
            (bad { $0.secrets = [Self.held("a", Data("v".utf8), sha256: "abc")] }, "DeviceInfo.vault.secrets[0].sha256 is not 64 lower-case hex digits"),
            (bad { $0.secrets = [VaultSecretInfo.with { $0.name = "a"; $0.sha256 = Self.sha256(Data()); $0.bytes = 4097 }] },
             "DeviceInfo.vault.secrets[0].bytes 4097 is more than 4096"),
            (bad { $0.state = .UNRECOGNIZED(9) }, "DeviceInfo.vault.state 9 is not known"),
        ]
        for (b, why) in refusals {
            let r = try await dc.post(DeviceAPI.info, try Self.info(b).serializedBytes())
            let line = String(decoding: r.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(r.status == 400 && line.contains(why) && !line.contains("\n"), "\(why): \(r.status) \(line)")
        }
        v = try #require(try await Self.show(c, id)["vault"] as? [String: Any])
        #expect(v["detail"] as? String == refused, "a refused info replaced the stored one: \(v)")

        try await dc.shutdown()
        await c.stop()
    }
}
