import Crypto
import Foundation
import Logging
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// `device set-secret` / `remove-secret`: stored in the device's config (SQLite and PostgreSQL
/// alike), shown by name, length and SHA-256 only, served whole to a device without an
/// attestation key and removed from what a device with one gets without this boot's token.
@Suite("Controller config secrets", .postgresServer)
struct ConfigSecretsTests {
    static func sha256(_ d: Data) -> String { SHA256.hash(data: d).map { String(format: "%02x", $0) }.joined() }

    /// True when `haystack` holds `needle` anywhere (the served or shown bytes, raw).
    static func contains(_ haystack: Data, _ needle: Data) -> Bool { haystack.range(of: needle) != nil }

    static func set(_ c: RunningController, _ id: String, _ name: String, _ value: Data) async throws -> [String: Any] {
        try await c.call("POST", "/devices/\(id)/set-secret", body: ["name": name, "valueBase64": value.base64EncodedString()])
            as? [String: Any] ?? [:]
    }

    static func refusal(_ body: () async throws -> Any) async -> String {
        do { _ = try await body(); return "accepted" } catch { return "\(error)" }
    }

    @Test(arguments: Backend.allCases)
    func secretsAreShownByHashServedWholeWithoutAKeyAndRemovedWithoutAToken(_ backend: Backend) async throws {
        let fixture = try StoreFixture(backend, tag: "secrets")
        let c = try await RunningController(tag: "secrets-\(backend.rawValue)", store: backend == .postgres ? fixture.location : nil)
        let (dc, id) = try await c.newDevice(serial: "SN-SECRETS")
        let h0 = try #require(try await dc.config(hash: "").1?.configHash)
        let value = Data("psk-\(UInt64.random(in: 1...UInt64.max))-never-shown".utf8)

        let reply = try await Self.set(c, id, "wifi.psk", value)
        let secret = reply["secret"] as? [String: Any]
        #expect(secret?["name"] as? String == "wifi.psk" && secret?["bytes"] as? Int == value.count
                && secret?["sha256"] as? String == Self.sha256(value), "\(reply)")
        _ = try await Self.set(c, id, "api-token", Data("second".utf8))

        // `device show`: names, lengths and hashes; no value in any form.
        let shown = try await c.call("GET", "/devices/\(id)")
        let shownBytes = Views.encode(shown)
        #expect(!Self.contains(shownBytes, value) && !Self.contains(shownBytes, Data(value.base64EncodedString().utf8)))
        let listed = ((shown as? [String: Any])?["config"] as? [String: Any])?["secrets"] as? [[String: Any]] ?? []
        #expect(listed.map { $0["name"] as? String } == ["api-token", "wifi.psk"], "sorted by name: \(listed)")
        #expect(listed.last?["sha256"] as? String == Self.sha256(value) && listed.last?["bytes"] as? Int == value.count)
        #expect(listed.allSatisfy { Set($0.keys) == ["name", "bytes", "sha256"] })

        // No attestation key (file identity): the whole config, secrets in it.
        let (status, whole) = try await dc.config(hash: h0)
        #expect(status == 200 && whole?.attestation.secretsWithheld == false)
        #expect(whole?.config.secrets.map(\.name) == ["api-token", "wifi.psk"] && whole?.config.secrets.last?.value == value)
        let h1 = try #require(whole?.configHash)

        // Refusals: one line each, nothing stored (the device still gets 304).
        let bad: [(String, Data, String)] = [
            (".hidden", Data("x".utf8), "is not a secret name"),
            ("a/b", Data("x".utf8), "is not a secret name"),
            (String(repeating: "n", count: 54), Data("x".utf8), "is not a secret name"),
            ("big", Data(count: 4097), "4097 bytes, more than 4096"),
            ("empty", Data(), "is empty"),
        ]
        for (name, v, why) in bad {
            let line = await Self.refusal { try await Self.set(c, id, name, v) }
            #expect(line.contains(why) && !line.contains("\n"), "\(name): \(line)")
        }
        let missing = await Self.refusal { try await c.call("POST", "/devices/\(id)/remove-secret", body: ["name": "nope"]) }
        #expect(missing == "the device has no secret nope", "\(missing)")
        #expect(try await dc.config(hash: h1).0 == 304, "a refused secret stores nothing")
        let cli = try runCommand([PostgresControllerTests.executable, "device", "set-secret", id, "bad/name", "--value", "v", "--data", c.dir.path],
                                 timeout: .seconds(60))
        #expect(cli.status == 1 && cli.stderr.contains("is not a secret name") && cli.stderr.split(separator: "\n").count == 1, "\(cli.output)")

        // remove-secret: gone from the served config.
        _ = try await c.call("POST", "/devices/\(id)/remove-secret", body: ["name": "api-token"])
        let (_, afterRemove) = try await dc.config(hash: h1)
        #expect(afterRemove?.config.secrets.map(\.name) == ["wifi.psk"])

        // A device with an attestation key and no token, or a token of no passed attestation:
        // the served bytes carry no secret, the marker is set and the hash is the withheld one.
        let (ak, akID) = try await c.newDevice(serial: "SN-SECRETS-AK")
        let store = backend == .postgres ? try await fixture.open() : try await StoreLocation.sqlite(path: c.dir.database).open(logger: Logger(label: "t"))
        try await store.putAttestationKey(AttestationKeyRecord(deviceID: akID, ekPublic: Data([1, 2]), akPublic: Data([3]), ekCertificate: Data(),
                                                               credentialSHA256: Data(repeating: 7, count: 32)))
        await fixture.close(store)
        _ = try await Self.set(c, akID, "wifi.psk", value)
        for token in [Data(), Data((0..<32).map { _ in UInt8.random(in: 0...255) })] {
            var request = ConfigRequest()
            request.attestationToken = token
            let served = try await ak.post(DeviceAPI.config, try request.serializedBytes())
            #expect(served.status == 200)
            #expect(!Self.contains(served.body, value), "the withheld config's bytes hold the secret (token \(token.count) bytes)")
            let r = try ConfigResponse(serializedBytes: served.body)
            #expect(r.attestation.secretsWithheld && r.config.secrets.isEmpty)
            let full = try await c.call("GET", "/devices/\(akID)") as? [String: Any]
            let fullHash = try #require(full?["configHash"] as? String)
            #expect(r.configHash == AttestationService.withheldHash(fullHash) && r.configHash != fullHash)
        }

        try await dc.shutdown()
        try await ak.shutdown()
        await c.stop()
    }
}
