import Foundation
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// Labels on devices and the selectors over them: parsing (with the position of a mistake),
/// `device list --select`, and bulk actions that reach exactly the selected devices.
@Suite("Device labels and selectors")
struct LabelTests {
    @Test func selectorsParseAndMatchAsDocumented() throws {
        let s = try LabelSelector.parse("env=prod,site!=lab,canary,!hold")
        #expect(s.terms == [.equals("env", "prod"), .notEquals("site", "lab"), .has("canary"), .lacks("hold")])
        #expect(s.matches(["env": "prod", "canary": "1"]))
        #expect(s.matches(["env": "prod", "site": "berlin", "canary": "yes"]))
        #expect(!s.matches(["env": "prod", "site": "lab", "canary": "1"]))
        #expect(!s.matches(["env": "prod", "canary": "1", "hold": "x"]))
        #expect(!s.matches(["env": "dev", "canary": "1"]))
        #expect(!s.matches(["env": "prod"]))
        #expect(try LabelSelector.parse("").matches([:]))
        #expect(try LabelSelector.parse("example.com/rack=r-12").terms == [.equals("example.com/rack", "r-12")])
    }

    @Test(arguments: [
        ("env=", 5, "a value is missing"),
        ("env=prod,", 10, "a key is missing"),
        ("=prod", 1, "'=' cannot start a key"),
        ("env=prod,,x", 10, "a key is missing"),
        ("env==prod", 5, "'=' cannot start a value"),
        ("env=pr od", 7, "expected ',' or the end, found ' '"),
        ("!", 2, "a key is missing"),
        ("-env", 1, "a key starts with a letter or digit"),
    ])
    func aBadSelectorIsOneLineNamingThePosition(_ text: String, _ position: Int, _ says: String) {
        do {
            _ = try LabelSelector.parse(text)
            Issue.record("'\(text)' parsed")
        } catch {
            #expect(error.description.contains("at position \(position): \(says)"), "\(error.description)")
            #expect(error.description.hasPrefix("--select '\(text)'"))
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func labelChangesAreKeyValueOrKeyDash() throws {
        #expect(try LabelSelector.parseChange("env=prod") == .set("env", "prod"))
        #expect(try LabelSelector.parseChange("env-") == .remove("env"))
        #expect(try LabelSelector.parseChange("a-b=c-") == .set("a-b", "c-"))
        for bad in ["env", "=x", "env=", "e nv=x", "env=a b", String(repeating: "k", count: 64) + "=v"] {
            #expect(throws: ControllerError.self, "\(bad)") { try LabelSelector.parseChange(bad) }
        }
    }

    @Test func listAndBulkActionsReachExactlyTheSelectedDevices() async throws {
        let c = try await RunningController(tag: "labels")
        defer { Task { await c.stop() } }
        var ids: [String] = []
        var clients: [DeviceClient] = []
        for n in 0..<5 {
            let (dc, id) = try await c.newDevice(serial: "SN-L\(n)")
            ids.append(id)
            clients.append(dc)
        }
        let labels: [[String: String]] = [["env": "prod", "site": "berlin"], ["env": "prod", "site": "lab"], ["env": "dev"],
                                          ["env": "prod", "hold": "yes"], [:]]
        for (id, l) in zip(ids, labels) where !l.isEmpty {
            _ = try await c.call("POST", "/devices/\(id)/label", body: ["set": l, "remove": [String]()])
        }
        // A label set then removed is gone.
        let after = try await c.call("POST", "/devices/SN-L4/label", body: ["set": ["tmp": "1"]]) as? [String: Any]
        #expect(after?["labels"] as? [String: String] == ["tmp": "1"])
        let removed = try await c.call("POST", "/devices/SN-L4/label", body: ["remove": ["tmp"]]) as? [String: Any]
        #expect(removed?["labels"] as? [String: String] == [:])

        func listed(_ select: String) async throws -> [String] {
            let q = select.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? select
            return (try await c.call("GET", "/devices?select=\(q)") as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
        }
        #expect(try await listed("env=prod") == [ids[0], ids[1], ids[3]])
        #expect(try await listed("env=prod,site!=lab,!hold") == [ids[0]])
        #expect(try await listed("!env") == [ids[4]])
        #expect(try await listed("") == ids)
        let show = try await c.call("GET", "/devices/SN-L0") as? [String: Any]
        #expect(show?["labels"] as? [String: String] == ["env": "prod", "site": "berlin"])

        // A bulk reboot reaches the selected devices once each, and no other.
        let r = try await c.call("POST", "/bulk/reboot", body: ["select": "env=prod,!hold"]) as? [String: Any]
        #expect((r?["devices"] as? [[String: Any]])?.compactMap { $0["device"] as? String } == [ids[0], ids[1]])
        for (n, dc) in clients.enumerated() {
            let (status, resp) = try await dc.config(hash: "")
            #expect(status == 200)
            #expect(resp?.config.commands.reboot == (n < 2 ? 1 : 0), "device \(n)")
            try await dc.shutdown()
        }
        // A bad selector on the socket is a 400 with the one line.
        do {
            _ = try await c.call("POST", "/bulk/reboot", body: ["select": "env=prod,,x"])
            Issue.record("a bad selector was accepted")
        } catch let e as ControllerError {
            #expect(e.description.contains("at position 10"))
        }
        await #expect(throws: ControllerError.self) { try await c.call("POST", "/bulk/set-network", body: ["select": ""]) }
    }

    @Test func theCommandLineRefusesABadSelectorInOneLineWithExitOne() throws {
        let t = try TemporaryDirectory("label-cli")
        for argv in [["device", "list", "--select", "env=prod,=x"], ["device", "reboot", "--select", "env=prod,=x"]] {
            let r = try runCommand([PostgresControllerTests.executable] + argv + ["--data", t.path], timeout: .seconds(60))
            #expect(r.status == 1, "\(argv): \(r.output)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains("at position 10: '=' cannot start a key"), "\(r.stderr)")
        }
        // Neither or both of DEVICE and --select: a usage error.
        for argv in [["device", "reboot"], ["device", "reboot", "SN-1", "--select", "a=b"]] {
            let r = try runCommand([PostgresControllerTests.executable] + argv + ["--data", t.path], timeout: .seconds(60))
            #expect(r.status == 2, "\(argv): \(r.output)")
            #expect(r.stderr.contains("give one DEVICE or --select SELECTOR"))
        }
    }
}
