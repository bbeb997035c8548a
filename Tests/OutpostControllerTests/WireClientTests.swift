import Foundation
@testable import OutpostController
import OutpostTestSupport
import Testing

/// An independent check of the wire format: a Python client (OpenSSL, the
/// `cryptography` package, a hand-written protobuf codec) registers and
/// fetches config (and a secret set meanwhile) over mutual TLS, then reports a vault holding it.
@Suite("Controller wire format (Python client)", .serialized)
struct WireClientTests {
    @Test func aPythonClientRegistersAndDecodesItsConfig() async throws {
        let c = try await RunningController(tag: "wire")
        defer { Task { await c.stop() } }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("wire_client.py").path
        let argv = ["python3", script, "127.0.0.1", String(c.port), c.dir.caCert, c.dir.onboardCert,
                    c.dir.configDir + "/onboard.key.pem", c.root, "SN-PY"]
        // Bounded: the script's own timeouts are 20 s per request; killed by PID past 120 s.
        // runCommand blocks, so it waits on a Dispatch thread: the in-process controller
        // needs the (two-thread) cooperative pool to answer the script.
        async let run: CommandResult = withCheckedThrowingContinuation { cont in
            DispatchQueue.global().async { cont.resume(with: Result { try runCommand(argv, timeout: .seconds(120)) }) }
        }
        // Once the script's device is registered, a secret: its next config poll decodes it (field 8).
        var registered: [DeviceRecord] = []
        for _ in 0..<300 where registered.isEmpty {
            registered = try await c.store.allDevices()
            if registered.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        let id = try #require(registered.first?.id, "the script's device never registered")
        _ = try await c.call("POST", "/devices/\(id)/set-secret", body: ["name": "wifi.psk", "valueBase64": Data("from-the-test".utf8).base64EncodedString()])
        let result = try await run
        #expect(result.status == 0, "wire_client.py: \(result.stdout) \(result.stderr)")
        let r = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        #expect(r["register"] as? Int == 201)
        #expect(r["onboard_config"] as? Int == 403)
        #expect(r["config"] as? Int == 200)
        #expect(r["config_again"] as? Int == 304)
        #expect(r["hash_matches"] as? Bool == true)
        #expect(r["secrets"] as? [[String]] == [["wifi.psk", "from-the-test"]], "\(r)")
        #expect(r["secrets_hash_matches"] as? Bool == true)
        let devices = try await c.store.allDevices()
        #expect(devices.count == 1)
        #expect(devices.first?.id == r["device_id"] as? String)
        #expect(devices.first?.serial == "SN-PY")
        #expect(devices.first?.configHash == r["latest_config_hash"] as? String, "the config with the secret is the stored one")
        // Its info's vault (field 13, encoded by hand in Python): the secret delivered, a floor of 0 kept as 0.
        #expect(r["info"] as? Int == 200, "\(r)")
        let shown = try await c.call("GET", "/devices/\(id)") as? [String: Any]
        let vault = shown?["vault"] as? [String: Any]
        #expect(vault?["state"] as? String == "unlocked" && vault?["detail"] as? String == "opened by wire_client.py"
                && vault?["floor"] as? Int == 0, "\(vault ?? [:])")
        #expect((vault?["secrets"] as? [[String: Any]])?.map { "\($0["name"] ?? "") \($0["delivery"] ?? "")" } == ["wifi.psk delivered"])
    }
}
