import Foundation
@testable import OutpostController
import OutpostProto
import OutpostTestSupport
import Testing

/// `device set-apps`: the apps file is checked with the device's own parser, stored in the
/// device's config (SQLite and PostgreSQL alike) and served in DeviceConfig.apps; the apps'
/// reported status and metrics come back through `device show` and the metrics history.
@Suite("Controller apps section", .postgresServer)
struct AppsSectionTests {
    static let digest = String(repeating: "ab", count: 32)
    static let manifest = #"{"acKind": "VMManifest", "acVersion": "1.1.1", "name": "counter", "vmmode": "HV_HVM", "#
        + #""images": [{"imagename": "boot", "maxsize": 16, "maxsizeUnit": "MB", "readonly": false, "preserve": true, "#
        + #""target": "Disk", "drvtype": "HDD"}], "resources": [{"name": "cpus", "value": 1}, {"name": "memory", "value": 65536}]}"#
    static let appsJSON = #"{"apps": [{"name": "counter", "activate": false, "restart": 2, "purge": 3, "manifest": "#
        + manifest + #", "images": [{"name": "boot", "url": "https://images.example/boot.raw", "sha256": ""#
        + digest + #"", "size": 1048576}]}]}"#

    /// Nothing in the file is dropped on its way into the section: the health check, the network and the vault flag.
    @Test func theHealthCheckAndTheNetworkTravelInTheSection() throws {
        let json = #"{"network": {"bridge": "apps0", "subnet": "10.201.0.1/24"}, "apps": [{"name": "counter", "manifest": "#
            + Self.manifest + #", "images": [{"name": "boot", "url": "https://images.example/boot.raw", "sha256": ""#
            + Self.digest + #"", "size": 1048576}], "health": {"consoleMarker": "alive", "timeoutSeconds": 30}}]}"#
        let section = try AppsSectionCodec.section(fromAppsJSON: Data(json.utf8))
        #expect(section.network.bridge == "apps0" && section.network.subnet == "10.201.0.1/24")
        let health = try #require(section.instances.first?.health)
        #expect(health.consoleMarker == "alive" && health.timeoutSeconds == 30 && health.graceSeconds == 60)
        let plain = try AppsSectionCodec.section(fromAppsJSON: Data(Self.appsJSON.utf8))
        #expect(!plain.hasNetwork && plain.instances.first?.hasHealth == false)
        #expect(plain.instances.first?.vault == false)
        // An app whose disks live in the device's vault says so in the section too.
        let inVault = try AppsSectionCodec.section(fromAppsJSON: Data(Self.appsJSON.replacingOccurrences(
            of: #""activate": false,"#, with: #""activate": false, "vault": true,"#).utf8))
        #expect(inVault.instances.first?.vault == true)
    }

    @Test(arguments: Backend.allCases)
    func setAppsStoresAndServesTheSectionAndABadFileIsRefusedInOneLine(_ backend: Backend) async throws {
        let fixture = try StoreFixture(backend, tag: "apps")
        let c = try await RunningController(tag: "apps-\(backend.rawValue)", store: backend == .postgres ? fixture.location : nil)
        let (dc, id) = try await c.newDevice(serial: "SN-APPS")
        let (_, first) = try await dc.config(hash: "")
        let h0 = try #require(first?.configHash)
        #expect(first?.config.hasApps == false, "no section until set-apps: the device runs its apps.json")

        let reply = try await c.call("POST", "/devices/\(id)/set-apps", body: ["appsJSON": Self.appsJSON]) as? [String: Any]
        #expect(reply?["apps"] as? [String] == ["counter"])
        let (status, second) = try await dc.config(hash: h0)
        #expect(status == 200)
        let config = try #require(second?.config)
        #expect(config.hasApps && config.apps.instances.count == 1)
        let app = try #require(config.apps.instances.first)
        #expect(app.name == "counter" && !app.activate && app.restartCounter == 2 && app.purgeCounter == 3)
        #expect(app.images.map(\.name) == ["boot"] && app.images.first?.url == "https://images.example/boot.raw")
        #expect(app.images.first?.sha256 == Self.digest && app.images.first?.size == 1_048_576)
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(app.manifestJson.utf8)) as? [String: Any])
        #expect(manifest["name"] as? String == "counter" && (manifest["images"] as? [Any])?.count == 1)
        let h1 = try #require(second?.configHash)

        // An empty list is a section too: the device then runs no apps (not its apps.json).
        _ = try await c.call("POST", "/devices/\(id)/set-apps", body: ["appsJSON": #"{"apps": []}"#])
        let (_, third) = try await dc.config(hash: h1)
        #expect(third?.config.hasApps == true && third?.config.apps.instances.isEmpty == true)
        let h2 = try #require(third?.configHash)

        // Malformed files: one line naming the field, and nothing stored (the hash stays).
        let bad = [
            (Self.appsJSON.replacingOccurrences(of: Self.digest, with: "xyz"), "apps[0].images[0].sha256"),
            (Self.appsJSON.replacingOccurrences(of: "\"counter\", \"activate\"", with: "\"Counter\", \"activate\""), "apps[0].name"),
            (#"{"apps": [{"name": "a"}]}"#, "apps[0]"),
            ("{\"apps\": [", "the apps file"),
        ]
        for (text, field) in bad {
            do {
                _ = try await c.call("POST", "/devices/\(id)/set-apps", body: ["appsJSON": text])
                Issue.record("accepted: \(text)")
            } catch let error as ControllerError {
                #expect(error.description.contains(field) && !error.description.contains("\n"), "\(error)")
            }
        }
        #expect(try await dc.config(hash: h2).0 == 304, "a refused file stores nothing")

        // The device's report of its apps, as `device show --json` has it.
        var info = DeviceInfo()
        info.timeUnixMs = UInt64(nowMs())
        info.identity.serial = "SN-APPS"
        var s = Outpost_Api_V1_AppStatus()
        s.name = "counter"; s.state = "running"; s.restarts = 1; s.bootSeconds = 0.8; s.residentBytes = 40 << 20
        s.memoryLimitBytes = 96 << 20; s.activate = true
        info.apps = [s]
        info.appsSource = "controller"
        #expect(try await dc.post(DeviceAPI.info, try info.serializedBytes()).status == 200)
        let shown = try await c.call("GET", "/devices/\(id)") as? [String: Any]
        let infoJSON = shown?["info"] as? [String: Any]
        let apps = infoJSON?["apps"] as? [[String: Any]]
        #expect(apps?.first?["name"] as? String == "counter" && apps?.first?["state"] as? String == "running")
        #expect(infoJSON?["appsSource"] as? String == "controller")

        var m = DeviceMetrics()
        m.timeUnixMs = UInt64(nowMs())
        var am = Outpost_Api_V1_AppMetrics()
        am.name = "counter"; am.cpuSeconds = 1.25; am.residentBytes = 40 << 20
        m.apps = [am]
        #expect(try await dc.post(DeviceAPI.metrics, try m.serializedBytes()).status == 200)
        am.cpuSeconds = -1
        m.apps = [am]
        #expect(try await dc.post(DeviceAPI.metrics, try m.serializedBytes()).status == 400, "a negative CPU time is malformed")
        let metrics = try await c.call("GET", "/devices/\(id)/metrics") as? [String: Any]
        let newest = (metrics?["metrics"] as? [[String: Any]])?.first
        #expect((newest?["apps"] as? [[String: Any]])?.first?["cpuSeconds"] as? Double == 1.25)

        try await dc.shutdown()
        await c.stop()
        if backend == .postgres {
            let store = try await fixture.open()
            #expect(try await store.allDevices().map(\.id) == [id])
            await fixture.close(store)
        }
    }
}
